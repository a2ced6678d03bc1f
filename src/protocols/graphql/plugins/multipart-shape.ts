import {
  getNamedType,
  getNullableType,
  getOperationAST,
  isInputObjectType,
  isListType,
  print,
  typeFromAST,
  type DocumentNode,
  type GraphQLInputType,
  type GraphQLSchema,
} from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { ErrorCode, GatewayError, quoted } from '../../../errors.ts';
import { isGraphQLError, toGraphQLError } from '../errors.ts';
import { bodyKind } from './body-kind.ts';

const SPEC =
  'the GraphQL multipart request spec wants "operations" as a JSON object (or a list of them) and "map" as a JSON object of part name to a list of paths such as ["variables.file"]';

/**
 * A multipart request whose `operations` or `map` parse as JSON but have the wrong shape (a number, a path that is no
 * string): yoga's parser then fails with a plain TypeError, which would be masked as a 500; when they are not JSON at
 * all (or missing), yoga answers 200 with an error without a code. Both are the client's mistake: 400 INVALID_INPUT,
 * saying what the spec wants.
 */
export function useMultipartShape(): Plugin {
  const refuse = (what: string) => toGraphQLError(new GatewayError(ErrorCode.INVALID_INPUT, `${what}: ${SPEC}`), { requestLevel: true });
  /** The map's paths of each multipart request, by part, for the check of where they put files (onExecute). */
  const mapped = new WeakMap<Request, [string, string][]>();
  return {
    onRequestParse({ request, requestParser, setRequestParser }) {
      if (!requestParser || bodyKind(request) !== 'multipart') return;
      setRequestParser(async (req) => {
        let params: unknown;
        try {
          params = await requestParser(req);
        } catch (e) {
          if (e instanceof Error && !isGraphQLError(e) && e.name !== 'AbortError') throw refuse('a malformed multipart request');
          // yoga's own words for a field that is missing or not JSON ("Multipart form field "map" must be a valid JSON
          // string"), which come without a code or status; limits and other typed errors pass as they are
          if (isGraphQLError(e) && e.extensions?.code === undefined && /multipart form field/i.test(e.message)) throw refuse(e.message);
          throw e;
        }
        // the form yoga parsed (a request parses its body once and keeps it); one that cannot be read again is left to
        // yoga's answers
        const form = await Promise.resolve()
          .then(() => req.formData())
          .catch(() => null);
        const twice = form ? repeatedParts.get(form) : undefined;
        if (twice !== undefined)
          throw refuse(
            `the part ${quoted(twice)} is given more than once: each part name goes once ("operations", "map", then one part per file)`,
          );
        // a list is batching, which yoga refuses itself (and a list's length is the client's: never walked here)
        if (!Array.isArray(params) && (typeof params !== 'object' || params === null)) throw refuse('"operations" is not a JSON object');
        if (!Array.isArray(params) && form) {
          const paths = checkMap(form, refuse);
          checkLists(
            params,
            paths.map(([, p]) => p),
            refuse,
          );
          if (paths.length > 0) mapped.set(req, paths);
        }
        return params as never;
      });
    },
    onExecute({ args, setResultAndStopExecution }) {
      const request = (args.contextValue as { request?: Request } | undefined)?.request;
      const paths = request && mapped.get(request);
      if (!paths) return;
      for (const [part, p] of paths) {
        const why = notAFile(args.schema, args.document, args.operationName, p);
        if (why !== null)
          return setResultAndStopExecution({
            errors: [
              toGraphQLError(
                new GatewayError(ErrorCode.INVALID_INPUT, `"map" puts the file of part ${quoted(part)} at ${quoted(p)}, ${why}`),
                {
                  requestLevel: true,
                },
              ),
            ],
          });
      }
    },
  };
}

/**
 * Why a map path does not lead to a File of the operation's variables (null when it does). graphql-js would coerce the
 * file as the value of whatever type is there: a JSON variable took it as a JSON value (its fields, and its bytes as a
 * list of numbers, written into model.json as metadata), and any other type said so with the File's insides dumped
 * in its message (one error per field for an input object); a variable the operation does not declare dropped it.
 */
function notAFile(schema: GraphQLSchema, document: DocumentNode, operationName: string | null | undefined, p: string): string | null {
  const operation = getOperationAST(document, operationName);
  if (!operation) return null; // graphql-js says why
  const [, name, ...rest] = p.split('.');
  const declared = operation.variableDefinitions ?? [];
  const definition = declared.find((d) => d.variable.name.value === name);
  if (!definition) {
    const names = declared.slice(0, 10).map((d) => `$${d.variable.name.value}`);
    if (declared.length > 10) names.push('...');
    const its = names.length > 0 ? ` (its variables: ${names.join(', ')})` : '';
    return `but the operation declares no variable ${quoted(`$${name}`)}${its}`;
  }
  const declaredAs = `$${name} is ${print(definition.type)}`;
  const declaredType = typeFromAST(schema, definition.type) as GraphQLInputType | undefined;
  if (!declaredType) return null; // an unknown type: refused by validation already
  let type: GraphQLInputType = declaredType;
  let at = `variables.${name}`;
  const elsewhere = (t: GraphQLInputType) =>
    `which is no File of the operation (${declaredAs}): ${
      getNamedType(t).name === 'JSON'
        ? 'a file is no JSON value: write the JSON itself in "operations" (a model.json goes in loadModel(files:), as a file)'
        : 'a file goes where the schema takes File (ImageInput.file, loadModel(files:)); an image as text goes in ImageInput.base64'
    }`;
  for (const key of rest) {
    const here: GraphQLInputType = getNullableType(type);
    if (isListType(here) && /^\d+$/.test(key)) type = here.ofType as GraphQLInputType;
    else if (isInputObjectType(here) && Object.hasOwn(here.getFields(), key)) type = here.getFields()[key].type;
    else if (getNamedType(here).name === 'File' && !isListType(here))
      return `which is no File of the operation: ${declaredAs}, and ${quoted(at)} is the file itself: write ${quoted(at)}`;
    else return elsewhere(here);
    at = `${at}.${key}`;
  }
  const here: GraphQLInputType = getNullableType(type);
  if (!isListType(here) && getNamedType(here).name === 'File') return null;
  if (isListType(here) && getNamedType(here).name === 'File')
    return `which is no File of the operation: ${declaredAs}, a list of files: write ${quoted(`${at}.0`)} for its first`;
  if (isInputObjectType(here)) {
    const field = Object.entries(here.getFields()).find(
      ([, f]) => getNamedType(f.type).name === 'File' && !isListType(getNullableType(f.type)),
    );
    if (field)
      return `which is no File of the operation: ${declaredAs}, whose file goes in its field ${quoted(field[0])}: write ${quoted(`${at}.${field[0]}`)}`;
  }
  return elsewhere(here);
}

/**
 * The map, read again from the form yoga parsed, where yoga applies whatever it finds: a path written as a string was
 * read letter by letter (answered "Unexpected parameter "v""), a part the map names but the request lacks, or a file
 * part the map does not bind, left the variable null ("Variable "$f" of non-null type "File!" must not be null").
 * Said here in the spec's terms.
 */
function checkMap(form: FormData, refuse: (what: string) => Error): [string, string][] {
  const text = form.get('map');
  const parts = [...new Set([...form.keys()])];
  const files = parts.filter((p) => p !== 'operations' && p !== 'map' && typeof form.get(p) !== 'string');
  let map: unknown = {};
  if (typeof text === 'string') {
    try {
      map = JSON.parse(text);
    } catch {
      return []; // refused by yoga already
    }
  }
  if (typeof map !== 'object' || map === null || Array.isArray(map)) throw refuse('"map" is not a JSON object');
  const bound = new Set<string>();
  const all: [string, string][] = [];
  for (const [part, paths] of Object.entries(map)) {
    if (!Array.isArray(paths) || !paths.every((p) => typeof p === 'string')) {
      const example = typeof paths === 'string' ? paths : 'variables.file';
      throw refuse(`"map" entry ${quoted(part)} is not a list of paths: write [${quoted(example)}]`);
    }
    for (const p of paths as string[]) {
      if (!p.startsWith('variables.'))
        throw refuse(`"map" path ${quoted(p)} does not point into the variables: write ${quoted(`variables.${p}`)}`);
      all.push([part, p]);
    }
    if (!form.has(part)) {
      throw refuse(`"map" names the part ${quoted(part)}, which the request does not have (its parts: ${parts.map(quoted).join(', ')})`);
    }
    bound.add(part);
  }
  const loose = files.find((p) => !bound.has(p));
  if (loose !== undefined && bound.size === 0) {
    throw refuse(`the part ${quoted(loose)} is not bound to a variable by "map": for example {${quoted(loose)}: ["variables.f"]}`);
  }
  return all;
}

/** The first part name each parsed form was given twice, by form. */
const repeatedParts = new WeakMap<object, string>();
const WATCHED = Symbol.for('inference-gateway.repeated-parts');

/**
 * whatwg-node's multipart parser puts each part in the form with FormData.set, so a part name given twice keeps only
 * the last: a second "operations" replaced the first without a word (what a proxy or a log read first is not what
 * runs), and of two files under one name one was dropped. The parser's FormData class is made to note a name set
 * again, which the request parser then refuses. Nothing else changes: set still replaces.
 */
export function watchRepeatedParts(FormDataClass: { prototype: FormData }): void {
  const proto = FormDataClass.prototype as FormData & { [WATCHED]?: true };
  if (proto[WATCHED]) return;
  const set = proto.set;
  proto.set = function (this: FormData, name: string, ...rest: unknown[]) {
    if (this.has(name) && !repeatedParts.has(this)) repeatedParts.set(this, name);
    return (set as (...a: unknown[]) => void).call(this, name, ...rest);
  } as FormData['set'];
  proto[WATCHED] = true;
}

/**
 * Every list a map path runs through, once the files are set: yoga sets a file at whatever index a path names, so
 * "variables.images.4294967294.file" on an empty list made a list of 4 billion holes, each walked (Array.from) before
 * any limit counted it: 27 s of the event loop, 2.2 GB, then a masked 500. A list with holes is refused; the spec has a
 * null in "operations" at the path of each file.
 */
function checkLists(params: unknown, paths: readonly string[], refuse: (what: string) => Error): void {
  const dense = new Set<unknown>();
  for (const p of paths) {
    let at: unknown = params;
    const keys = p.split('.');
    for (let i = 0; i < keys.length && typeof at === 'object' && at !== null; i++) {
      if (Array.isArray(at) && !dense.has(at)) {
        // the items there, against its length: counted by its own keys, not by walking the length
        if (Object.keys(at).length !== at.length)
          throw refuse(
            `"map" path ${quoted(p)} leaves holes in the list ${quoted(keys.slice(0, i).join('.'))} (a file past its end): put a null in "operations" at the path of each file`,
          );
        dense.add(at);
      }
      if (!Object.hasOwn(at, keys[i])) break;
      at = (at as Record<string, unknown>)[keys[i]];
    }
  }
}
