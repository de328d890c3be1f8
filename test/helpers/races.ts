/** Requests for issue 23's races: a PATCH held open mid-body while other requests go on. */
import http from 'node:http';

export interface SlowPatchOptions {
  headers?: Record<string, string>;
  /** The loopback address to connect from (behind a PROXY v2 balancer, direct requests must not come from its address). */
  localAddress?: string;
}

/**
 * A chunked PATCH whose body streams until `finish` is called: the server reads the upload's state when the request
 * arrives and stores at the end. `answer` is the status and the OCI error code, if any.
 */
export function slowPatch(url: string, location: string, offset: number, body: Buffer, o: SlowPatchOptions = {}) {
  let finish!: () => void;
  const answer = new Promise<{ status: number; code?: string }>((resolve, reject) => {
    const headers = { ...o.headers, 'Content-Range': `${offset}-${offset + body.length - 1}`, 'Transfer-Encoding': 'chunked' };
    const req = http.request(`${url}${location}`, { method: 'PATCH', headers, localAddress: o.localAddress, agent: false }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode!, code: text ? (JSON.parse(text) as { errors: { code: string }[] }).errors[0].code : undefined }));
    });
    req.on('error', reject);
    req.write(body.subarray(0, 64 << 10));
    finish = () => req.end(body.subarray(64 << 10));
  });
  answer.catch(() => {});
  return { answer, finish: () => finish() };
}
