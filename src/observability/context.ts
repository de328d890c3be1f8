/**
 * The request a piece of work belongs to, carried across awaits (AsyncLocalStorage), so that storage requests can
 * name it to the backend (Swift's X-Trans-Id-Extra) without every call passing it down.
 *
 * Carried only once a reader has asked for it: on Node 20 a running AsyncLocalStorage installs promise hooks that
 * cost every promise of every request (HEAD blob on the filesystem: about a fifth of its throughput), for an id
 * that only the Swift driver reads.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

const requestContext = new AsyncLocalStorage<{ requestId: string }>();
let wanted = false;

/** Called by a reader of `transactionSuffix` (the Swift driver) when it is made. */
export function carryRequestIds(): void {
  wanted = true;
}

/** Run `fn` as part of request `requestId`. */
export function inRequest<T>(requestId: string, fn: () => T): T {
  return wanted ? requestContext.run({ requestId }, fn) : fn();
}

/** The current request id as Swift accepts it in X-Trans-Id-Extra (at most 32 characters), or undefined. */
export function transactionSuffix(): string | undefined {
  return requestContext.getStore()?.requestId.replace(/-/g, '').slice(0, 32);
}
