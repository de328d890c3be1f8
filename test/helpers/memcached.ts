/**
 * Real memcached servers (Debian's /usr/bin/memcached) on free loopback ports, one per test that needs it. Never
 * 11211: that one is Swift's (tools/swift-aio.sh).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import net from 'node:net';
import { userInfo } from 'node:os';

export interface MemcachedServer {
  port: number;
  /** "127.0.0.1:PORT", as a config lists it. */
  address: string;
  child: ChildProcess;
  /** Kill it (its items are gone, as in a real restart). */
  stop(): Promise<void>;
  /** Start it again on the same port, empty. */
  restart(): Promise<void>;
  /** SIGSTOP, resolved once the kernel shows it stopped: it keeps its connections and port but answers nothing. */
  freeze(): Promise<void>;
  thaw(): void;
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise((resolve) => srv.close(resolve));
  if (port === 11211) return freePort();
  return port;
}

async function answering(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ host: '127.0.0.1', port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

function launch(port: number, extra: string[]): Promise<ChildProcess> {
  const args = ['-p', String(port), '-l', '127.0.0.1', '-U', '0', '-t', '1', '-m', '8', ...extra];
  if (userInfo().uid === 0) args.push('-u', 'root');
  const child = spawn('memcached', args, { stdio: 'ignore' });
  return (async () => {
    for (let i = 0; i < 100; i++) {
      if (child.exitCode !== null) throw new Error(`memcached on ${port} exited with ${child.exitCode}`);
      if (await answering(port)) return child;
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGKILL');
    throw new Error(`memcached on ${port} did not start`);
  })();
}

/** `extra`: more memcached options (-C: no CAS). */
export async function startMemcached(extra: string[] = []): Promise<MemcachedServer> {
  const port = await freePort();
  const server: MemcachedServer = {
    port,
    address: `127.0.0.1:${port}`,
    child: await launch(port, extra),
    async stop() {
      const child = server.child;
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGCONT');
      await new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      });
    },
    async restart() {
      await server.stop();
      server.child = await launch(port, extra);
    },
    async freeze() {
      server.child.kill('SIGSTOP');
      // The signal takes effect when each thread is next scheduled: wait for the state "T" of every thread.
      const state = async (task: string) => {
        const stat = await readFile(`/proc/${server.child.pid}/task/${task}/stat`, 'latin1');
        return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      };
      for (let i = 0; i < 200; i++) {
        const states = await Promise.all((await readdir(`/proc/${server.child.pid}/task`)).map(state));
        if (states.every((s) => s === 'T')) return;
        await new Promise((r) => setTimeout(r, 10));
      }
      throw new Error('memcached did not stop');
    },
    thaw: () => void server.child.kill('SIGCONT'),
  };
  return server;
}

/** One raw request on a new connection: what an item looks like to memcached, bypassing the client under test. */
export async function rawCommand(port: number, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ host: '127.0.0.1', port });
    let out = '';
    s.on('data', (d) => {
      out += d;
      if (/(END|STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|ERROR[^\r]*)\r\n$/.test(out)) {
        s.destroy();
        resolve(out);
      }
    });
    s.on('error', reject);
    s.write(command);
  });
}
