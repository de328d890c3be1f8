/**
 * Calls over node:cluster's IPC channel between the primary and a worker, in both directions: a worker asks the
 * primary for the host's shared state (upload locks, failed-login buckets, the login cache, metrics), and the
 * primary asks each worker for its metrics. One message shape, tagged so that other messages on the channel are
 * left alone. Messages on one channel arrive in the order sent: a worker's
 * fire-and-forget `notify` reaches the primary before any call it makes afterwards.
 */
import type { Serializable } from 'node:child_process';
import type { Worker } from 'node:cluster';

/** Sends one message to the peer; false when the channel is closed. */
export type Send = (message: unknown) => boolean;

/** The sender for `process` in a worker or a `cluster.Worker` in the primary. */
export function sender(peer: NodeJS.Process | Worker): Send {
  return (message) => {
    if ('isConnected' in peer ? !peer.isConnected() : !peer.connected) return false;
    // With a callback, a send that fails as the channel closes is reported there, not as an 'error' event that
    // would end the process.
    if ('isConnected' in peer) peer.send(message as Serializable, undefined, {}, () => {});
    else peer.send!(message, undefined, {}, () => {});
    return true;
  };
}

export type Handler = (body: unknown) => unknown;

interface Call {
  berth: 'call';
  id: number;
  kind: string;
  body: unknown;
}
interface Reply {
  berth: 'reply';
  id: number;
  ok: boolean;
  body: unknown;
}
interface Notice {
  berth: 'notice';
  kind: string;
  body: unknown;
}
type Message = Call | Reply | Notice;

export class ChannelClosed extends Error {}

function isMessage(m: unknown): m is Message {
  if (!m || typeof m !== 'object') return false;
  const b = (m as { berth?: unknown }).berth;
  return b === 'call' || b === 'reply' || b === 'notice';
}

/** One side of one channel: calls out with replies, and the handlers for what the other side calls. */
export class Channel {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void; timer: NodeJS.Timeout }>();
  private closed = false;

  constructor(
    private readonly sendRaw: Send,
    private readonly handlers: Record<string, Handler>,
  ) {}

  /** Feed every message the channel receives; false when it is not one of ours. */
  receive(message: unknown): boolean {
    if (!isMessage(message)) return false;
    if (message.berth === 'reply') {
      const p = this.pending.get(message.id);
      if (!p) return true; // timed out already
      this.pending.delete(message.id);
      clearTimeout(p.timer);
      if (message.ok) p.resolve(message.body);
      else p.reject(new Error(String(message.body)));
      return true;
    }
    const handler = Object.hasOwn(this.handlers, message.kind) ? this.handlers[message.kind] : undefined;
    if (message.berth === 'notice') {
      // A notice has nobody to answer: a bad one is dropped (the peer is our own code; this guards against bugs).
      if (handler) Promise.resolve().then(() => handler(message.body)).catch(() => {});
      return true;
    }
    const { id } = message;
    Promise.resolve()
      .then(() => {
        if (!handler) throw new Error(`unknown call ${message.kind}`);
        return handler(message.body);
      })
      .then(
        (body) => this.send({ berth: 'reply', id, ok: true, body }),
        (err: Error) => this.send({ berth: 'reply', id, ok: false, body: err.message }),
      );
    return true;
  }

  call<T>(kind: string, body: unknown, timeoutMs = 5000): Promise<T> {
    if (this.closed) return Promise.reject(new ChannelClosed('cluster channel closed'));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`cluster call ${kind} timed out`));
      }, timeoutMs).unref();
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      if (!this.send({ berth: 'call', id, kind, body })) {
        this.pending.delete(id);
        clearTimeout(timer);
        reject(new ChannelClosed('cluster channel closed'));
      }
    });
  }

  notify(kind: string, body: unknown): void {
    if (!this.closed) this.send({ berth: 'notice', kind, body });
  }

  /** The peer is gone: every call waiting for it fails now rather than at its timeout. */
  close(): void {
    this.closed = true;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ChannelClosed('cluster channel closed'));
      this.pending.delete(id);
    }
  }

  private send(message: Message): boolean {
    try {
      return this.sendRaw(message);
    } catch {
      // The channel closed under us (the peer exited): its 'disconnect' handler closes this side.
      return false;
    }
  }
}
