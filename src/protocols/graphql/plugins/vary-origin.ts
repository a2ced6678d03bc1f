import type { Plugin } from 'graphql-yoga';

/**
 * With CORS_ORIGINS set, an answer depends on the request's Origin: a listed one gets Access-Control-Allow-Origin, any
 * other (or none) gets no CORS header. whatwg-node says `Vary: Origin` only beside the header it adds, so a shared
 * cache could keep the copy made for an unlisted origin (or for none) and serve it to a listed one, which its browser
 * then cannot read. Every answer says it varies by Origin (the Fetch standard's advice for an allow-list).
 */
export function useVaryOrigin(): Plugin {
  return {
    onResponse({ response }) {
      const vary = response.headers.get('vary');
      if (!vary) response.headers.set('vary', 'Origin');
      else if (!/(^|,)\s*(origin|\*)\s*(,|$)/i.test(vary)) response.headers.set('vary', `${vary}, Origin`);
    },
  };
}
