import { describe, expect, it } from 'vitest';
import { carryRequestIds, inRequest, transactionSuffix } from '../../src/observability/context.js';

describe('request context', () => {
  it('is carried across awaits only once a reader asked for it', async () => {
    const seen = async () => {
      await new Promise((r) => setTimeout(r, 1));
      return transactionSuffix();
    };
    // Nothing in this file made a Swift driver: no context, so no promise hooks on every request.
    expect(await inRequest('0a1b2c3d-0000-4000-8000-00000000000f', seen)).toBeUndefined();
    carryRequestIds();
    expect(await inRequest('0a1b2c3d-0000-4000-8000-00000000000f', seen)).toBe('0a1b2c3d00004000800000000000000f');
    expect(await seen()).toBeUndefined();
  });
});
