/**
 * What a GraphQL request's parameters come in, as yoga's parsers tell them apart (by method, then Content-Type): the
 * query string of a GET, a JSON body, a form (application/x-www-form-urlencoded) or a multipart request; null for
 * anything else (application/graphql, ...).
 */
export type BodyKind = 'get' | 'json' | 'form' | 'multipart';

export function bodyKind(request: Request): BodyKind | null {
  if (request.method === 'GET') return 'get';
  const type = request.headers.get('content-type')?.toLowerCase() ?? '';
  if (type.startsWith('multipart/form-data')) return 'multipart';
  if (type.startsWith('application/x-www-form-urlencoded')) return 'form';
  return type.includes('json') ? 'json' : null;
}
