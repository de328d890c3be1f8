/**
 * The request a piece of work belongs to, carried across awaits (AsyncLocalStorage), so that storage requests can
 * name it to the backend (Swift's X-Trans-Id-Extra) without every call passing it down.
 *
 * Carried only where the storage driver declares that it names requests (`StorageDriver.namesRequests`): on Node 20
 * a running AsyncLocalStorage installs promise hooks that cost every promise of every request (HEAD blob on the
 * filesystem: about a fifth of its throughput), for an id that only the Swift driver reads. The app decides, per
 * app, from its driver; nothing global changes when a driver is made.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

const requestContext = new AsyncLocalStorage<{ requestId: string }>();

/** Run `fn` as part of request `requestId`; with `carry` false, `fn` runs as it is and sees no request. */
export function inRequest<T>(requestId: string, fn: () => T, carry: boolean): T {
  return carry ? requestContext.run({ requestId }, fn) : fn();
}

/** The current request id as Swift accepts it in X-Trans-Id-Extra (at most 32 characters), or undefined. */
export function transactionSuffix(): string | undefined {
  return requestContext.getStore()?.requestId.replace(/-/g, '').slice(0, 32);
}
