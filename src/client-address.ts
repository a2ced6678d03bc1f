import { BlockList, isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import { wasForwarded } from './inference/access.ts';

/**
 * Who the client is, for the limits kept per client address (connections, request bytes, subscriptions, WebSocket
 * connections). Behind a proxy or load balancer every client connects from the proxy's address, so together they
 * would share one client's limits, and one of them could hold them all. The proxies named in TRUSTED_PROXIES
 * (addresses or CIDR blocks) are believed: a request from one of them is the client's that its `X-Forwarded-For`
 * names, read from the right (each proxy appends the address it got the request from) past every trusted proxy, as
 * nginx's `real_ip_recursive` and Express's `trust proxy` read it. Nobody else is believed: a client that sends its
 * own `X-Forwarded-For` straight to the server, or through a proxy, cannot choose the address it is counted under.
 * A trusted proxy's own connections are not capped per client (it carries many clients); the total cap still holds.
 *
 * A global IPv6 client is its prefix (CLIENT_IPV6_PREFIX, a /64 by default), not its address: a host on the internet is
 * usually given a whole /64 and can pick a new address from it for every connection, which would make every per-client
 * limit moot (as express-rate-limit and Cloudflare's rate limiting count IPv6 clients). See key().
 */
export class ClientAddresses {
  private readonly trusted: BlockList | null;
  /** isProxy's answers, by address (at most 4096, then forgotten all at once). */
  private readonly checked = new Map<string, boolean>();
  /** IPv6 addresses' keys (a parse and a mask each), likewise. */
  private readonly v6Keys = new Map<string, string>();

  /**
   * `trusted`: addresses and CIDR blocks, checked by parseTrustedProxy (config.ts does, so that a typo stops the start);
   * `ipv6Prefix`: the bits of an IPv6 address that name its client (128: every address apart).
   */
  constructor(
    trusted: readonly string[] = [],
    private readonly ipv6Prefix = 64,
  ) {
    if (!Number.isInteger(ipv6Prefix) || ipv6Prefix < 1 || ipv6Prefix > 128)
      throw new Error(`ClientAddresses: ipv6Prefix must be an integer 1..128, got ${ipv6Prefix}`);
    if (trusted.length === 0) {
      this.trusted = null;
      return;
    }
    const list = new BlockList();
    for (const entry of trusted) {
      const { address, prefix, family } = parseTrustedProxy(entry);
      if (prefix === null) list.addAddress(address, family);
      else list.addSubnet(address, prefix, family);
    }
    this.trusted = list;
  }

  /** A peer address is one of TRUSTED_PROXIES. */
  isProxy(address: string | null | undefined): boolean {
    if (!this.trusted || !address) return false;
    let known = this.checked.get(address);
    if (known === undefined) {
      const family = isIP(address);
      known = family !== 0 && this.trusted.check(address, family === 4 ? 'ipv4' : 'ipv6');
      // BlockList.check costs microseconds (a native address object each time); the same few peers ask every time
      if (this.checked.size >= 4096) this.checked.clear();
      this.checked.set(address, known);
    }
    return known;
  }

  /**
   * A request was relayed: its peer is a trusted proxy (whatever headers it sends: one that adds none would otherwise
   * pass for this machine), or it carries a forwarding header. Admin access reads it (access.ts).
   */
  relayed(peer: string | null | undefined, header: (name: string) => unknown): boolean {
    return this.isProxy(peer) || wasForwarded(header);
  }

  /**
   * The client a request counts as: its peer, or for a peer that is a trusted proxy the rightmost address of
   * `X-Forwarded-For` that is not one. Null when a trusted proxy names nobody the server can read (no header, an entry
   * that is not an address, only trusted proxies, more than MAX_HOPS of them): counted as the proxy, such a request
   * would give whoever can make its address unreadable a second client's share, so where a per-client limit would
   * count it, it is refused (UNATTRIBUTED).
   */
  of(peer: string | null | undefined, forwardedFor: unknown): string | null {
    if (!this.isProxy(peer)) return this.key(peer ?? 'unknown');
    const header = Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor;
    if (typeof header !== 'string') return null;
    // from the right, one hop at a time, at most MAX_HOPS (a trusted peer's header could hold thousands)
    let end = header.length;
    for (let hops = 0; hops < MAX_HOPS && end > 0; hops++) {
      const start = header.lastIndexOf(',', end - 1);
      const hop = plainAddress(header.slice(start + 1, end).trim());
      if (hop === null) return null;
      if (!this.isProxy(hop)) return this.key(hop);
      end = start;
    }
    return null;
  }

  /**
   * The client a request counts as for a limit that shares places out rather than refuses (a model's queue): of(), and
   * the requests that name nobody all count as one client together (none gets a share of its own).
   */
  shareOf(peer: string | null | undefined, forwardedFor: unknown): string {
    return this.of(peer, forwardedFor) ?? '(unattributed)';
  }

  /**
   * What a client address counts as: a global IPv6 address (2000::/3) its prefix ("2a01:4f8:1:2::/64"); an IPv4-mapped
   * or NAT64 (64:ff9b::/96) one its IPv4 address; any other IPv6 address (link-local, unique local, loopback: hosts of
   * one network segment, or one node's pods, share a /64 there) itself.
   */
  key(address: string): string {
    // an IPv4 address is itself (the common case, and per request: no parse), and so is what is no address at all (a
    // socket that is gone has none)
    if (isIP(address) !== 6) return address;
    let key = this.v6Keys.get(address);
    if (key === undefined) {
      key = this.v6Key(address);
      if (this.v6Keys.size >= 4096) this.v6Keys.clear();
      this.v6Keys.set(address, key);
    }
    return key;
  }

  private v6Key(address: string): string {
    let v6: ipaddr.IPv6;
    try {
      v6 = ipaddr.IPv6.parse(address.split('%')[0]); // a zone (fe80::1%eth0) names an interface here, not a client
    } catch {
      return address;
    }
    const bytes = v6.toByteArray();
    if (v6.isIPv4MappedAddress() || v6.range() === 'rfc6052') return bytes.slice(12).join('.');
    if (this.ipv6Prefix === 128 || (bytes[0] & 0xe0) !== 0x20) return ipaddr.fromByteArray(bytes).toString();
    for (let bit = this.ipv6Prefix; bit < 128; bit++) bytes[bit >> 3] &= ~(0x80 >> (bit & 7));
    return `${ipaddr.fromByteArray(bytes).toString()}/${this.ipv6Prefix}`;
  }
}

/** What a request relayed by a trusted proxy that names no client is answered, where a per-client limit would count it. */
export const UNATTRIBUTED =
  'this request came through a trusted proxy (TRUSTED_PROXIES) without an X-Forwarded-For naming its client (none, or one whose last address cannot be read): the proxy must append the address it got the request from, or leave TRUSTED_PROXIES';

/** Hops of X-Forwarded-For read at most, from the right: no chain of proxies is that long. */
const MAX_HOPS = 32;

/**
 * An X-Forwarded-For entry as an address: some proxies add a port ("1.2.3.4:5678", "[2001:db8::1]:443"), and a zone is
 * dropped; null if it is none.
 */
function plainAddress(entry: string): string | null {
  const m = /^\[([^\]]+)\](?::\d+)?$/.exec(entry) ?? /^([\d.]+):\d+$/.exec(entry);
  const address = (m ? m[1] : entry).split('%')[0];
  return isIP(address) ? address : null;
}

/** One TRUSTED_PROXIES entry: an IPv4 or IPv6 address, or a CIDR block (10.0.0.0/8, fd00::/8). Throws a message that says what is wrong. */
export function parseTrustedProxy(entry: string): { address: string; prefix: number | null; family: 'ipv4' | 'ipv6' } {
  const [address, prefixText, extra] = entry.trim().split('/');
  const version = address.includes('%') ? 0 : isIP(address);
  const family = version === 4 ? 'ipv4' : 'ipv6';
  if (version === 0 || extra !== undefined)
    throw new Error(`${JSON.stringify(entry)} is not an IP address or a CIDR block (such as 10.0.0.0/8 or fd00::/8)`);
  if (prefixText === undefined) return { address, prefix: null, family };
  const prefix = /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
  const max = version === 4 ? 32 : 128;
  if (!(prefix >= 0 && prefix <= max))
    throw new Error(`${JSON.stringify(entry)}: the prefix length of an ${family === 'ipv4' ? 'IPv4' : 'IPv6'} block is 0 to ${max}`);
  return { address, prefix, family };
}
