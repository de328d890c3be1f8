/** The only place concrete drivers are constructed; composition roots (serve, prune, fsck) call it. */
import type { StorageConfig } from '../config/config.js';
import type { StorageDriver } from './driver.js';
import { FilesystemDriver } from './filesystem.js';
import { loadCloud } from './swift/clouds.js';
import { SwiftDriver } from './swift/driver.js';

export async function openStorage(config: StorageConfig): Promise<StorageDriver> {
  switch (config.driver) {
    case 'filesystem':
      return FilesystemDriver.open(config.root);
    case 'swift':
      return SwiftDriver.connect({ auth: loadCloud(config.cloud, config.cloudsFile), container: config.container, segmentSize: config.segmentSize });
  }
}
