/**
 * Which upstream a repository name asks for, as zuul-jobs' three clients send names (docs/mirrors.md):
 *
 * - podman/cri-o registries.conf `HOST/quay.io`, skopeo:  `quay.io/org/app`             → quay.io, `org/app`
 * - containerd hosts.toml `/v2/quay.io` + override_path:   `quay.io/org/app?ns=quay.io`  → the same (mapped once)
 *   and for docker.io:                                     `docker.io/library/x?ns=docker.io`
 * - dockerd registry-mirrors, podman's docker.io mirror:   `library/x`, `x`             → docker.io, only where the
 *                                                           namespace opted in (`unprefixed`)
 *
 * The local repositories a request may find first ("local content wins") are listed too: zuul stores a buildset's
 * docker.io images unprefixed, so locally `docker.io/X` and `X` are one repository.
 */
import type { MirrorConfig } from '../config/mirrors.js';
import { validName } from '../registry/paths.js';

export interface MirrorTarget {
  mirror: MirrorConfig;
  /** The repository name on the upstream. */
  upstreamName: string;
  /** Local repositories to look in first, in order (the name as sent first). */
  local: string[];
}

const DOCKER_HUB = 'docker.io';

export class MirrorNames {
  private readonly byRegistry: Map<string, MirrorConfig>;

  constructor(mirrors: MirrorConfig[]) {
    this.byRegistry = new Map(mirrors.map((m) => [m.registry, m]));
  }

  get enabled(): boolean {
    return this.byRegistry.size > 0;
  }

  /**
   * The upstream `name` maps to for a client working in `ns`, or null when it maps to none (an ordinary local
   * name, an upstream this namespace may not use, a registry not configured). `nsQuery` is containerd's `?ns=`.
   */
  map(ns: string, name: string, nsQuery?: string): MirrorTarget | null {
    if (!validName(name)) return null;
    const slash = name.indexOf('/');
    const first = slash < 0 ? '' : name.slice(0, slash);
    // containerd names the registry: its path carries the prefix too (override_path) or not (a plain mirror host).
    if (nsQuery !== undefined) {
      const m = this.byRegistry.get(nsQuery);
      if (!m || !this.allowed(m, ns)) return null;
      return this.target(m, first === nsQuery ? name.slice(slash + 1) : name, name);
    }
    const prefixed = first ? this.byRegistry.get(first) : undefined;
    if (prefixed) return this.allowed(prefixed, ns) ? this.target(prefixed, name.slice(slash + 1), name) : null;
    // A first component with a dot names a registry (Docker Hub accounts have none): never sent to Docker Hub.
    if ((first || name).includes('.')) return null;
    const hub = this.byRegistry.get(DOCKER_HUB);
    if (hub && this.allowed(hub, ns) && (hub.unprefixed === 'all' || hub.unprefixed.includes(ns))) return this.target(hub, name, name);
    return null;
  }

  private allowed(m: MirrorConfig, ns: string): boolean {
    return m.namespaces === undefined || m.namespaces.includes(ns);
  }

  private target(mirror: MirrorConfig, rest: string, asSent: string): MirrorTarget | null {
    if (!validName(rest)) return null;
    const hub = mirror.registry === DOCKER_HUB;
    // Docker Hub's official images live under library/; `docker.io/busybox` is `library/busybox` there.
    const upstreamName = hub && !rest.includes('/') ? `library/${rest}` : rest;
    const local = [asSent];
    if (hub) {
      // `docker.io/X` and `X` are one repository locally (zuul pushes docker.io images unprefixed).
      const bare = asSent.startsWith(`${DOCKER_HUB}/`) ? asSent.slice(DOCKER_HUB.length + 1) : asSent;
      for (const candidate of [bare, `${DOCKER_HUB}/${bare}`]) if (!local.includes(candidate) && validName(candidate)) local.push(candidate);
    }
    return { mirror, upstreamName, local };
  }
}
