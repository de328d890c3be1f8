import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // e2e and Swift suites share one Swift and spawn servers; keep files sequential on 2 cores
    fileParallelism: false,
  },
});
