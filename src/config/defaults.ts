/**
 * Every default in one place: what Berth does when the configuration, a command line or a caller says nothing.
 * Durations are in seconds, as the configuration writes them; the code that needs milliseconds converts.
 */
export const DEFAULTS = {
  address: '0.0.0.0',
  port: 9000,
  /** Uploads idle for longer are abandoned (prune deletes them). */
  uploadExpiry: 3600,
  /** A refresh token (docker's stored credential) stays valid this long. */
  refreshTokenExpiry: 86_400,
  /** Idle keep-alive outlasts the usual 60 s of load balancers, so they never reuse a connection Berth is closing. */
  // A client that takes no byte of a response for send-idle is gone or hostile: docker and containerd read a layer
  // continuously, and 60 s is what Swift's proxy allows Berth as a reader (client_timeout) and body-idle a writer.
  timeouts: { handshake: 10, headers: 10, idle: 65, bodyIdle: 60, sendIdle: 60 },
  limits: {
    // Far above what real clients send (one PATCH per layer; the chunkiest, 1,200, in the Swift tests).
    chunksPerUpload: 10_000,
    // A zuul buildset registry keeps every job's pushes in one namespace: far above what a busy CI keeps open.
    uploadsPerNamespace: 1_000,
    maxBlobSize: 100 * 1024 ** 3,
  },
  /** Processes serving requests on one host (`workers: auto` is one per core). */
  workers: 1,
  /** Failed logins per client address before 429, refilled one per this many seconds; addresses remembered. */
  logins: { failures: 10, refillSeconds: 30, maxAddresses: 10_000 },
  swift: {
    /** Largest chunk object and SLO segment. */
    segmentSize: 64 * 1024 * 1024,
    /** A metadata request's deadline, and the longest a streamed body may stall. */
    requestTimeout: 120,
    /** How long a temp-URL redirect stays valid. */
    tempUrlExpiry: 300,
    /**
     * commit: link: a blob of one object under this size is still copied to a plain object (docs/swift.md, "One-chunk
     * blobs in link mode": below it the copy costs at most 0.1-0.2 s once, and a one-segment SLO read costs 1.4-2.7x).
     */
    minLinkedSize: 8 * 1024 * 1024,
  },
  /**
   * Seconds between a server's writes of what it committed (for quotas) and between its re-reads of everyone's:
   * the largest overshoot of a quota grows with it (docs/security-storage.md, Quotas).
   */
  quotaInterval: 5,
  /** Blobs fsck reads at once. */
  fsckParallel: 4,
} as const;
