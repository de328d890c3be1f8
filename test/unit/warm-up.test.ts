/** The mirror's start-up warm-up: a loopback node:http transfer of exactly the bytes asked for. */
import { describe, expect, it } from 'vitest';
import { warmUpStreams } from '../../src/mirror/warm-up.js';

describe('warmUpStreams', () => {
  it('streams exactly the bytes asked for, a partial last piece included, and leaves no listener behind', async () => {
    const before = process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap' || r === 'TCPSocketWrap').length;
    expect(await warmUpStreams((3 << 20) + 5)).toBe((3 << 20) + 5);
    expect(await warmUpStreams(0)).toBe(0);
    await new Promise((r) => setTimeout(r, 50));
    const after = process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap' || r === 'TCPSocketWrap').length;
    expect(after).toBe(before);
  });
});
