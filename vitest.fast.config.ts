import { defineConfig } from 'vitest/config';

/**
 * `npm run test:fast`: the core on the in-memory and filesystem drivers, the HTTP layer in-process, the units.
 * No Swift, no real clients, no child servers, so the files may run side by side.
 */
export default defineConfig({
  test: {
    include: [
      'test/unit/**/*.test.ts',
      'test/drivers/memory.test.ts',
      'test/drivers/filesystem.test.ts',
      'test/http/**/*.test.ts',
      'test/registry/**/*.test.ts',
    ],
    // Suites that exist for Swift alone; every other suite drops its Swift variant under BERTH_TEST_TIER=fast.
    exclude: ['test/http/swift-*.test.ts'],
    env: { BERTH_TEST_TIER: 'fast' },
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
