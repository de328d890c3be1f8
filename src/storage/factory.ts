/** The only place concrete drivers are constructed; composition roots (serve, prune, fsck) call it. */
import type { StorageConfig } from '../config/config.js';
import type { StorageDriver } from './driver.js';
import { FilesystemDriver } from './filesystem.js';
import { CloudConfigError, loadCloud } from './swift/clouds.js';
import { SwiftDriver } from './swift/driver.js';

/** Storage could not be opened: a message for the operator, and whether the configuration is at fault. */
export class StorageOpenError extends Error {
  constructor(
    message: string,
    readonly configuration: boolean,
  ) {
    super(message);
    this.name = 'StorageOpenError';
  }
}

/** Open the configured backend, or fail with a StorageOpenError that says why. */
export async function openStorage(config: StorageConfig): Promise<StorageDriver> {
  try {
    return await open(config);
  } catch (err) {
    throw new StorageOpenError(`cannot open ${config.driver} storage: ${(err as Error).message}`, err instanceof CloudConfigError);
  }
}

async function open(config: StorageConfig): Promise<StorageDriver> {
  switch (config.driver) {
    case 'filesystem':
      return FilesystemDriver.open(config.root);
    case 'swift':
      return SwiftDriver.connect({
        auth: loadCloud(config.cloud, config.cloudsFile),
        container: config.container,
        segmentSize: config.segmentSize,
        tempUrlKey: config.tempUrlKey,
        requestTimeoutMs: config.requestTimeout === undefined ? undefined : config.requestTimeout * 1000,
      });
  }
}
