/** The only place concrete drivers are constructed; composition roots (serve, prune, fsck) call it. */
import type { StorageConfig } from '../config/config.js';
import type { StorageDriver } from './driver.js';
import { FilesystemDriver } from './filesystem.js';

export async function openStorage(config: StorageConfig): Promise<StorageDriver> {
  switch (config.driver) {
    case 'filesystem':
      return FilesystemDriver.open(config.root);
    case 'swift':
      throw new Error('the swift driver is not available in this build');
  }
}
