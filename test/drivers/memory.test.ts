import { MemoryDriver } from '../../src/storage/memory.js';
import { runDriverSuite } from './suite.js';

runDriverSuite('memory', async () => new MemoryDriver());
