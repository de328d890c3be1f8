/** `berth prune`: placeholder until issue #5 lands. */
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';

export async function runPrune(_config: Config, _args: string[], _log: Logger): Promise<number> {
  process.stderr.write('berth: prune is not implemented yet\n');
  return 1;
}
