// Over 250 lines on purpose: the page is one component tree (model list, picture, results, token), kept together.
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import {
  followStatus,
  listModels,
  RequestError,
  run,
  setLoaded,
  TASKS,
  type Connection,
  type ModelInfo,
  type Result,
  type VersionInfo,
} from './api.ts';
import { Classification, Detection, Segmentation } from './results.tsx';

interface Picture {
  /** Tells two choices of the same file apart. */
  serial: number;
  file: Blob;
  name: string;
  url: string;
}

interface Shown {
  result: Result;
  /** The parts of the answer that did not come, and why. */
  errors: RequestError[];
  model: string;
  picture: string;
  ms: number;
}

const TOKEN_KEY = 'gateway-token';

/**
 * How long the page waits for an answer before it gives the request up (TIMEOUT): past the time by which the gateway,
 * on its defaults, has answered, if only with an error of its own. A photo's run: within about 4.5 min (the upload
 * received within REQUEST_TIMEOUT_MS, 2 min; a wait in the model's queue of batching.timeoutMs, 30 s; a decode of
 * DECODE_TIMEOUT_MS, 10 s; an engine call of ENGINE_CALL_TIMEOUT_MS, 2 min), so 5 min. A load: within
 * ENGINE_LOAD_TIMEOUT_MS, 10 min (a large model takes minutes), so 11 min; an unload waits for the runs in flight,
 * within that too. The list is read from the gateway's memory: 1 min. Past it nothing is coming: the gateway stalled,
 * or a proxy holds the connection. `?timeout=` (seconds) in the address sets them all, for a gateway whose operator
 * raised or lifted those bounds.
 */
const BOUNDS = { run: 5 * 60_000, admin: 11 * 60_000, list: 60_000 };
/** The longest a timer waits (2^31-1 ms, 24.8 days). */
const MAX_WAIT_MS = 2 ** 31 - 1;
/** The bounds `?timeout=` asks for, and why it was not used when it is no number of seconds above 0 (said on the page). */
function boundsOf(search: string): { bounds: typeof BOUNDS; unusable: string | null } {
  const given = new URLSearchParams(search).get('timeout');
  if (given === null) return { bounds: BOUNDS, unusable: null };
  const asked = given.trim() === '' ? NaN : Number(given);
  if (!(asked > 0))
    return {
      bounds: BOUNDS,
      unusable: `?timeout=${given} is not a number of seconds above 0, so the page waits as long as it would without it (5 min for a run, 11 min for a Load or Unload, 1 min for the model list): write ?timeout=600 for 10 min`,
    };
  const ms = Math.min(asked * 1000, MAX_WAIT_MS);
  return { bounds: { run: ms, admin: ms, list: ms }, unusable: null };
}
const LONGER = 'add ?timeout=<seconds> to the address to wait longer';

/** A run given up (cancelled, or past its bound), said with what to do next. */
function runGivenUp(e: RequestError, model: string, picture: string): RequestError {
  if (e.code === 'CANCELLED')
    return new RequestError(e.code, `cancelled: the page stopped waiting for ${model} on ${picture}; Try again runs it again`);
  if (e.code === 'TIMEOUT')
    return new RequestError(
      e.code,
      `${e.message} for ${model} on ${picture}. A large model, a first run or a busy gateway can take long, or a proxy may hold the request: Try again, or ${LONGER}`,
    );
  return e;
}

/** A load or unload given up: the gateway may still do it, which the list then shows. */
function adminGivenUp(e: RequestError, model: string, load: boolean): RequestError {
  const what = load ? 'load' : 'unload';
  const still = `the gateway may still ${what} it (its state here shows when)`;
  if (e.code === 'CANCELLED') return new RequestError(e.code, `cancelled: the page stopped waiting for the ${what} of ${model}; ${still}`);
  if (e.code === 'TIMEOUT')
    return new RequestError(
      e.code,
      `${e.message} for the ${what} of ${model}; ${still}. ${
        load
          ? 'Loading a large model can take minutes (10 at most, unless ENGINE_LOAD_TIMEOUT_MS says otherwise)'
          : 'An unload waits for the runs in flight'
      }, or a proxy may hold the request: ${load ? 'Load' : 'Unload'} again, or ${LONGER}`,
    );
  return e;
}
const isTask = (t: string): t is (typeof TASKS)[number] => (TASKS as readonly string[]).includes(t);
const asError = (e: unknown) => (e instanceof RequestError ? e : new RequestError('CLIENT_ERROR', (e as Error).message ?? String(e)));

/** The state a model is in, for people: the serving version's, else the newest version's. */
export function modelState(m: ModelInfo): { text: string; kind: 'ok' | 'busy' | 'off' | 'failed'; version?: VersionInfo } {
  const serving = m.versions.filter((v) => v.state === 'AVAILABLE').sort((a, b) => b.version - a.version)[0];
  if (serving) return { text: 'AVAILABLE', kind: 'ok', version: serving };
  const newest = [...m.versions].sort((a, b) => b.version - a.version)[0];
  if (!newest) return { text: 'NO VERSION', kind: 'off' };
  if (newest.state === 'END')
    return newest.errorCode ? { text: newest.errorCode, kind: 'failed', version: newest } : { text: 'UNLOADED', kind: 'off' };
  return { text: newest.state, kind: 'busy', version: newest };
}

/** An error as the server gave it, code first; for a part of an answer, the part that did not come. */
function ErrorLine({ error }: { error: RequestError }) {
  return (
    <div class="error" role="alert">
      <code>{error.code}</code> {error.part && `${error.part}: `}
      {error.message}
    </div>
  );
}

/** What the last Load or Unload of a model said, beside it: a failed version's error, or why the request failed. */
interface AdminNote {
  model: string;
  error: RequestError;
  /** The version whose load failed: the note goes once that version no longer has an error (it loaded since). */
  version?: number;
}

export function App() {
  const [models, setModels] = useState<ModelInfo[] | null>(null);
  const [selected, setSelected] = useState<string | null>(() => new URLSearchParams(location.search).get('model'));
  const [token, setToken] = useState(() => sessionStorage.getItem(TOKEN_KEY) ?? '');
  const [connection, setConnection] = useState<{ state: Connection; why?: string }>({ state: 'connecting' });
  const [picture, setPicture] = useState<Picture | null>(null);
  const [shown, setShown] = useState<Shown | null>(null);
  const [error, setError] = useState<RequestError | null>(null);
  const [running, setRunning] = useState(false);
  // the Load / Unload requests going on, by model (each with its Cancel), and what the last one to end said
  const adminRequests = useRef(new Map<string, { request: AbortController; load: boolean }>());
  const [busyModels, setBusyModels] = useState<ReadonlyMap<string, { request: AbortController; load: boolean }>>(new Map());
  const [adminNote, setAdminNote] = useState<AdminNote | null>(null);
  // failed versions whose error was dismissed (model:version): a version that failed before this page's own Load (at
  // the gateway's start, by another client) has its error said under the model too, until dismissed
  const [dismissed, setDismissed] = useState<ReadonlySet<string>>(new Set());
  // how long each request may take (see BOUNDS), as the address says when the page opens
  const [{ bounds, unusable: unusableTimeout }] = useState(() => boundsOf(location.search));
  // the request of the run going on: aborted by Cancel, and when another run takes its place (its answer is not wanted)
  const runRequest = useRef<AbortController | null>(null);
  // Try again: the same picture on the same model, once more
  const [attempt, setAttempt] = useState(0);
  const [dragging, setDragging] = useState(false);
  const runs = useRef(0);
  const pictures = useRef(0);
  // the model and picture whose run is over (answered or failed): the page is busy until that is the current pair
  const [settled, setSettled] = useState('');
  const fileInput = useRef<HTMLInputElement>(null);

  // the model list, re-read whenever the subscription says something changed (coalesced), with the current token
  const tokenNow = useRef(token);
  tokenNow.current = token;
  const refreshing = useRef<Promise<void> | null>(null);
  const again = useRef(false);
  // the error a failed read of the list put on screen: a read that succeeds takes it away, whatever its code
  const listFailure = useRef<RequestError | null>(null);
  // the error a failed run put on screen: it is of that run's model, and goes when a model that runs nothing is picked
  const runFailure = useRef<RequestError | null>(null);
  const refresh = useCallback(() => {
    if (refreshing.current) {
      again.current = true;
      return;
    }
    refreshing.current = listModels(tokenNow.current, { timeoutMs: bounds.list })
      .then((list) => {
        setModels(list);
        setError((e) => (e === listFailure.current || e?.code === 'UNAUTHENTICATED' || e?.code === 'NETWORK_ERROR' ? null : e));
      })
      .catch((e) => {
        const failure = asError(e);
        setError(
          (listFailure.current =
            failure.code === 'TIMEOUT'
              ? new RequestError(
                  failure.code,
                  `${failure.message} for the model list; it is read again at the next change, or reload the page`,
                )
              : failure),
        );
      })
      .finally(() => {
        refreshing.current = null;
        if (again.current) {
          again.current = false;
          refresh();
        }
      });
  }, []);

  useEffect(() => {
    refresh();
    return followStatus(token, { changed: refresh, connection: (state, why) => setConnection({ state, why }) });
  }, [token, refresh]);

  const model = models?.find((m) => m.name === selected) ?? null;
  const ready = models !== null;

  // with no model asked for, start on the first one the page can run
  useEffect(() => {
    if (ready && selected === null) setSelected(models.find((m) => isTask(m.task))?.name ?? null);
  }, [ready]);

  // a new picture, or another model with a picture chosen: run it at once
  useEffect(() => {
    if (!picture || !ready || !selected) return;
    const m = models.find((x) => x.name === selected);
    runRequest.current?.abort(); // a run still going is of the picture or model before: its answer is not wanted
    runRequest.current = null;
    if (!m || !isTask(m.task)) {
      // nothing runs for this model: a run still going is of the model before, and its answer is not this one's
      runs.current++;
      setRunning(false);
      setShown(null);
      setError((e) => (e === runFailure.current ? null : e));
      setSettled(`${selected}:${picture.serial}`);
      return;
    }
    const id = ++runs.current;
    const request = (runRequest.current = new AbortController());
    setRunning(true);
    setError(null);
    const t0 = performance.now();
    run(m.task, m.name, picture.file, picture.name, token, { timeoutMs: bounds.run, signal: request.signal })
      .then(
        ({ result, errors }) =>
          id === runs.current && setShown({ result, errors, model: m.name, picture: picture.name, ms: performance.now() - t0 }),
      )
      .catch((e) => {
        if (id !== runs.current) return;
        setShown(null);
        setError((runFailure.current = runGivenUp(asError(e), m.name, picture.name)));
      })
      .finally(() => {
        if (id !== runs.current) return;
        runRequest.current = null;
        setRunning(false);
        setSettled(`${m.name}:${picture.serial}`);
      });
  }, [picture, selected, ready, attempt]);

  // the address of the picture on screen, given back when another takes its place
  const pictureUrl = useRef<string | null>(null);
  const choose = (file: Blob | null | undefined, name?: string) => {
    if (!file) return;
    const serial = ++pictures.current;
    const fileName = name ?? (file instanceof File ? file.name : 'pasted.png');
    const replace = (next: Picture | null) => {
      if (pictureUrl.current) URL.revokeObjectURL(pictureUrl.current);
      pictureUrl.current = next?.url ?? null;
      setShown(null);
      setPicture(next);
    };
    // read now, and held: a File is only a reference, which a folder chosen, or a photo moved or deleted once chosen,
    // made fail at fetch(), as NETWORK_ERROR "the gateway did not answer"
    file.arrayBuffer().then(
      (bytes) => {
        if (serial !== pictures.current) return;
        // whatever the type, it is sent: the server decides what is an image, and says so readably when it is not
        const held = new Blob([bytes], { type: file.type });
        replace({ serial, file: held, name: fileName, url: URL.createObjectURL(held) });
      },
      (e: unknown) => {
        if (serial !== pictures.current) return;
        runs.current++; // a run still going is of the picture before
        runRequest.current?.abort();
        setRunning(false);
        replace(null);
        const why = (e as Error)?.name ?? String(e);
        setError(
          (runFailure.current = new RequestError(
            'UNREADABLE_FILE',
            `cannot read ${fileName} (${why}): a folder, or a file moved, deleted or unreadable since it was chosen; choose an image file`,
          )),
        );
      },
    );
  };

  const select = (name: string) => {
    setSelected(name);
    // the rest of the address (?timeout=) is kept
    const query = new URLSearchParams(location.search);
    query.delete('model');
    const rest = query.toString();
    history.replaceState(null, '', `?model=${encodeURIComponent(name)}${rest ? `&${rest}` : ''}`);
  };

  // drop anywhere on the page, paste anywhere
  useEffect(() => {
    const over = (e: DragEvent) => {
      if (!e.dataTransfer?.types.includes('Files')) return;
      e.preventDefault();
      setDragging(true);
    };
    const leave = (e: DragEvent) => {
      if (e.relatedTarget === null) setDragging(false);
    };
    const drop = (e: DragEvent) => {
      e.preventDefault();
      setDragging(false);
      const f = e.dataTransfer?.files[0];
      if (f) choose(f);
    };
    const paste = (e: ClipboardEvent) => {
      const target = e.target as HTMLElement | null;
      if (target?.tagName === 'INPUT') return;
      const item = [...(e.clipboardData?.items ?? [])].find((i) => i.kind === 'file');
      const f = item?.getAsFile();
      if (f) {
        e.preventDefault();
        choose(f, f.name || 'pasted.png');
      }
    };
    window.addEventListener('dragover', over);
    window.addEventListener('dragleave', leave);
    window.addEventListener('drop', drop);
    window.addEventListener('paste', paste);
    return () => {
      window.removeEventListener('dragover', over);
      window.removeEventListener('dragleave', leave);
      window.removeEventListener('drop', drop);
      window.removeEventListener('paste', paste);
    };
  });

  const toggle = async (m: ModelInfo) => {
    const load = modelState(m).kind !== 'ok';
    const request = new AbortController();
    adminRequests.current.set(m.name, { request, load });
    setBusyModels(new Map(adminRequests.current));
    setAdminNote(null); // what the last action said is replaced by what this one says
    try {
      const after = await setLoaded(m.name, load, token, { timeoutMs: bounds.admin, signal: request.signal });
      // a load that failed is answered with the model: its version says why (the newest that failed, if several)
      const failed = load ? after.versions.filter((v) => v.errorCode).sort((a, b) => b.version - a.version)[0] : undefined;
      if (failed)
        setAdminNote({
          model: m.name,
          error: new RequestError(failed.errorCode!, failed.errorMessage ?? `version ${failed.version} did not load`),
          version: failed.version,
        });
    } catch (e) {
      setAdminNote({ model: m.name, error: adminGivenUp(asError(e), m.name, load) });
    } finally {
      adminRequests.current.delete(m.name);
      setBusyModels(new Map(adminRequests.current));
      refresh();
    }
  };

  const saveToken = (value: string) => {
    const t = value.trim();
    // a refusal of the token before (FORBIDDEN, UNAUTHENTICATED, INVALID_TOKEN) is not about this one
    const ofToken = (e: RequestError | null | undefined) => !!e && ['FORBIDDEN', 'UNAUTHENTICATED', 'INVALID_TOKEN'].includes(e.code);
    if (t !== token) {
      setError((e) => (ofToken(e) ? null : e));
      setAdminNote((n) => (ofToken(n?.error) ? null : n));
    }
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
    setToken(t);
  };

  return (
    <div class={`layout${dragging ? ' dragging' : ''}`}>
      <header>
        <h1>GraphQL inference gateway</h1>
        <span class={`connection ${connection.state}`} title={connection.why ?? ''}>
          {connection.state === 'live' ? 'live' : connection.state === 'connecting' ? 'connecting…' : 'offline'}
        </span>
        <nav>
          <a href="/graphql">GraphiQL</a>
        </nav>
        <form class="token" onSubmit={(e) => e.preventDefault()}>
          <label>
            Token{' '}
            <input
              type="password"
              name="token"
              autocomplete="off"
              placeholder="admin or API token"
              value={token}
              onChange={(e) => saveToken((e.target as HTMLInputElement).value)}
            />
          </label>
        </form>
      </header>

      <aside>
        <h2>Models</h2>
        {models === null && !error && <p class="muted">loading…</p>}
        <ul class="models">
          {models?.map((m) => {
            const st = modelState(m);
            const busy = busyModels.get(m.name);
            // a failed version's note stays while that version has its error (it goes once the version loads)
            const failed = st.kind === 'failed' && st.version ? `${m.name}:${st.version.version}` : null;
            const note = busy
              ? null
              : adminNote?.model === m.name &&
                  (adminNote.version === undefined || m.versions.some((v) => v.version === adminNote.version && v.errorCode))
                ? adminNote.error
                : failed && !dismissed.has(failed)
                  ? new RequestError(st.version!.errorCode!, st.version!.errorMessage ?? '')
                  : null;
            const dismiss = () => {
              if (adminNote?.model === m.name) setAdminNote(null);
              if (failed) setDismissed((d) => new Set(d).add(failed));
            };
            return (
              <li
                key={m.name}
                class={`model${m.name === selected ? ' selected' : ''}`}
                data-name={m.name}
                data-state={st.text}
                title={st.version?.errorMessage ?? m.description}
              >
                <button class="pick" onClick={() => select(m.name)} aria-pressed={m.name === selected}>
                  <span class="name">{m.name}</span>
                  <span class="task">{m.task}</span>
                  {/* a long code breaks at its underscores (MODEL_LOAD_FAILED pushed the Load button out of the list) */}
                  <span class={`state ${st.kind}`}>
                    {st.text.split('_').map((part, i, all) => (i < all.length - 1 ? [`${part}_`, <wbr key={i} />] : part))}
                  </span>
                </button>
                {token && (
                  <button class="admin" disabled={!!busy} onClick={() => void toggle(m)}>
                    {busy ? '…' : st.kind === 'ok' ? 'Unload' : 'Load'}
                  </button>
                )}
                {busy && (
                  <div class="model-wait">
                    {busy.load ? 'loading' : 'unloading'}…{' '}
                    <button class="cancel" onClick={() => busy.request.abort()}>
                      Cancel
                    </button>
                  </div>
                )}
                {note && (
                  <div class="model-note" role="alert">
                    <code>{note.code}</code> {note.message}
                    <button class="dismiss" title="Dismiss" aria-label="Dismiss" onClick={dismiss}>
                      ×
                    </button>
                  </div>
                )}
              </li>
            );
          })}
        </ul>
        {token ? (
          <p class="muted small">
            Load and unload need the admin token if the gateway sets ADMIN_TOKEN; without one, they work from this machine only.
          </p>
        ) : (
          <p class="muted small">
            Type a token above to get Load / Unload: the admin token if the gateway sets ADMIN_TOKEN; without one, admin works from this
            machine only.
          </p>
        )}
        {unusableTimeout && (
          <p class="timeout-unusable small" role="alert">
            {unusableTimeout}
          </p>
        )}
      </aside>

      <main>
        <section class="input">
          <div class="chooser">
            <strong>{model ? model.name : selected ? `${selected} (not in the repository)` : 'pick a model'}</strong>
            {model && (
              <bdi class="muted description" title={model.description}>
                {model.description}
              </bdi>
            )}
          </div>
          <label class="drop" onClick={() => fileInput.current?.click()}>
            <input
              ref={fileInput}
              type="file"
              accept="image/*"
              hidden
              onChange={(e) => {
                const input = e.target as HTMLInputElement;
                choose(input.files?.[0]);
                input.value = '';
              }}
            />
            <span>
              <b>Choose an image</b>, drop it here, or paste it
            </span>
          </label>
        </section>

        {ready && selected && !model && (
          <p class="notice">
            The gateway has no model named <code>{selected}</code>: pick one from the list.
          </p>
        )}
        {model && !isTask(model.task) && (
          <p class="notice">
            {model.name} is a <code>{model.task}</code> model: it takes tensors, not photos. Use the <code>infer</code> mutation in{' '}
            <a href="/graphql">GraphiQL</a>.
          </p>
        )}
        {error && <ErrorLine error={error} />}

        {picture && (
          <section
            class="output"
            data-picture={picture.name}
            data-busy={String(settled !== `${selected}:${picture.serial}`)}
            data-result={shown ? `${shown.model}:${shown.picture}` : ''}
          >
            <div class="status">
              {running ? (
                <>
                  <span class="running">running {selected}…</span>{' '}
                  <button class="cancel" onClick={() => runRequest.current?.abort()}>
                    Cancel
                  </button>
                </>
              ) : shown ? (
                <span class="latency">
                  {shown.model} · <b>{Math.round(shown.ms)} ms</b> round trip
                </span>
              ) : error && error === runFailure.current && ['CANCELLED', 'TIMEOUT', 'NETWORK_ERROR'].includes(error.code) ? (
                <button class="retry" onClick={() => setAttempt((n) => n + 1)}>
                  Try again
                </button>
              ) : null}
            </div>
            {shown?.errors.map((e, i) => (
              <ErrorLine key={i} error={e} />
            ))}
            {shown?.result.task === 'detection' ? (
              <Detection picture={picture.url} result={shown.result} />
            ) : shown?.result.task === 'segmentation' ? (
              <Segmentation picture={picture.url} result={shown.result} />
            ) : (
              <div class="viewer">
                <img src={picture.url} alt={picture.name} />
              </div>
            )}
            {shown?.result.task === 'classification' && <Classification result={shown.result} />}
          </section>
        )}
      </main>
    </div>
  );
}
