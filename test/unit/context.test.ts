import { describe, expect, it } from 'vitest';
import { inRequest, transactionSuffix } from '../../src/observability/context.js';

describe('request context', () => {
  it('is carried across awaits only when asked for, and only inside the request', async () => {
    const seen = async () => {
      await new Promise((r) => setTimeout(r, 1));
      return transactionSuffix();
    };
    // Not carried (a driver that does not name requests): no context, so no promise hooks on every request.
    expect(await inRequest('0a1b2c3d-0000-4000-8000-00000000000f', seen, false)).toBeUndefined();
    expect(await inRequest('0a1b2c3d-0000-4000-8000-00000000000f', seen, true)).toBe('0a1b2c3d00004000800000000000000f');
    expect(await seen()).toBeUndefined();
  });
});
