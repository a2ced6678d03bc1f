import { isIP } from 'node:net';

/**
 * DNS rebinding protection: a request is answered only when its Host header names this server the way its operator
 * expects: an IP address (a rebinding attack needs a host name), localhost, or a name in ALLOWED_HOSTS (`*` allows
 * any). Browsers cannot forge the Host header, so a page of evil.example whose name was rebound to 127.0.0.1 is
 * refused.
 */
export function hostAllowed(host: string | undefined, allowedHosts: readonly string[]): boolean {
  if (!host) return true; // HTTP/1.0 without Host: no browser sends that
  if (allowedHosts.includes('*')) return true;
  const name = fullName(host.startsWith('[') ? host.slice(1, host.indexOf(']')) : host.replace(/:\d+$/, ''));
  if (isIP(name)) return true;
  if (name === 'localhost' || name.endsWith('.localhost')) return true;
  return allowedHosts.some((h) => fullName(h) === name);
}

/** A host name as compared: lower case, and without the one trailing dot of its fully qualified form (gw.example.). */
function fullName(name: string): string {
  return name.toLowerCase().replace(/(?<!\.)\.$/, '');
}
