/**
 * The request a piece of work belongs to, carried across awaits (AsyncLocalStorage), so that storage requests can
 * name it to the backend (Swift's X-Trans-Id-Extra) without every call passing it down.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

export const requestContext = new AsyncLocalStorage<{ requestId: string }>();

/** The current request id as Swift accepts it in X-Trans-Id-Extra (at most 32 characters), or undefined. */
export function transactionSuffix(): string | undefined {
  return requestContext.getStore()?.requestId.replace(/-/g, '').slice(0, 32);
}
