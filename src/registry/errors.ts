/** Registry errors carry an OCI error code; http/ maps each code to its status and writes the error envelope. */
export type OciCode =
  | 'BLOB_UNKNOWN'
  | 'BLOB_UPLOAD_INVALID'
  | 'BLOB_UPLOAD_UNKNOWN'
  | 'DIGEST_INVALID'
  | 'MANIFEST_BLOB_UNKNOWN'
  | 'MANIFEST_INVALID'
  | 'MANIFEST_UNKNOWN'
  | 'NAME_INVALID'
  | 'NAME_UNKNOWN'
  | 'SIZE_INVALID'
  | 'RANGE_INVALID'
  | 'PAGINATION_NUMBER_INVALID'
  | 'UNAUTHORIZED'
  | 'DENIED'
  | 'UNSUPPORTED'
  | 'TOOMANYREQUESTS'
  | 'PAYLOAD_TOO_LARGE'
  | 'UNAVAILABLE'
  | 'UNKNOWN';

export class RegistryError extends Error {
  constructor(
    public readonly code: OciCode,
    message: string,
    public readonly detail?: unknown,
  ) {
    super(message);
    this.name = 'RegistryError';
  }
}

export const blobUnknown = (digest: string) => new RegistryError('BLOB_UNKNOWN', 'blob unknown to registry', { digest });
export const uploadUnknown = (id: string) => new RegistryError('BLOB_UPLOAD_UNKNOWN', 'blob upload unknown to registry', { uuid: id });
export const manifestUnknown = (reference: string) => new RegistryError('MANIFEST_UNKNOWN', 'manifest unknown', { reference });
export const nameUnknown = (name: string) => new RegistryError('NAME_UNKNOWN', 'repository name not known to registry', { name });
