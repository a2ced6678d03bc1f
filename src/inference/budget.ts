import { ErrorCode, GatewayError, clientGone } from '../errors.ts';
import type { RunOptions } from './service.ts';

/** A request's share of the process's memory budget: take n bytes more, or the error to answer (nothing taken). */
export interface MemoryHold {
  take(n: number): GatewayError | null;
}

export interface BudgetLimits {
  /** Images (and raw inferences) per request. */
  maxImages: number;
  /** Costly renderings (masks, overlays, annotated images) per request. */
  maxRendered?: number;
  /** Bytes of tensors and images a response may carry. */
  maxResponseBytes?: number;
  /** Bytes of input per request: raw tensors, and images (uploaded or base64) once for each item that names them. */
  maxInputBytes?: number;
}

/**
 * What one request may spend, counted as it executes (every alias, list item, fragment spread and nested pipeline
 * takes from it before its work starts): images, renderings, input and output bytes. Every protocol makes one per
 * request. `signal` tells when the client has gone away, so work not yet started for it is skipped; `client` is who
 * sent it, for the limits kept per client (a model's queue).
 */
export class RequestBudget {
  /**
   * Labels (model.json's classes, listed by class id) one answer may list: the largest map's, once (ids go up to
   * 999,999). Each is a list item graphql-js completes and writes one by one on the event loop, 0.2-0.35 us each: 60
   * aliases of a million labels held it 4-8 s, every other client waiting, before MAX_RESPONSE_BYTES stopped them.
   */
  static readonly MAX_LABELS = 1_000_000;
  private images = 0;
  private labels = 0;
  private rendered = 0;
  private responseBytes = 0;
  private inputBytes = 0;

  /**
   * The process's memory budget for this request (MAX_BYTES_IN_FLIGHT), where its protocol keeps one: bytes the server
   * reads for it besides what it sent (a file under IMAGE_ROOTS) are taken from it, and given back with the request's.
   */
  memory?: MemoryHold;

  constructor(
    readonly limits: BudgetLimits,
    readonly signal?: AbortSignal,
    memory?: MemoryHold,
    readonly client?: string,
  ) {
    this.memory = memory;
  }

  /** What each part of this request has admitted per model version and not yet released (RunOptions.held). */
  private readonly held = new Map<string, NonNullable<RunOptions['held']>>();

  /**
   * What the inference service is told of one part of the request (`scope`: a GraphQL root field with all it nests, whose
   * calls run at once): its signal, its client, and what that part holds. Parts that run one after another count apart:
   * what an earlier part that failed early still has running is given back soon, and is not this part's to wait for.
   */
  runOptionsFor(scope: string): RunOptions {
    let held = this.held.get(scope);
    if (!held) this.held.set(scope, (held = new Map()));
    return { signal: this.signal, client: this.client, held };
  }

  /** LIMIT_EXCEEDED naming the limit, its setting, and what the client can do. */
  private static over(what: string, limit: number, setting: string, remedy: string): GatewayError {
    return new GatewayError(ErrorCode.LIMIT_EXCEEDED, `more than ${limit} ${what} in one request (${setting}): ${remedy}`);
  }

  /** Take n images, or LIMIT_EXCEEDED (nothing taken) when they would go past the limit. */
  takeImages(n = 1): void {
    if (this.images + n > this.limits.maxImages)
      throw RequestBudget.over(
        'images or inferences',
        this.limits.maxImages,
        'MAX_IMAGES_PER_REQUEST',
        'send the others in another request',
      );
    this.images += n;
  }

  /** Take one costly rendering (a mask, overlay or annotated image, or a photo decoded whole for its crops). */
  takeRendered(): void {
    const max = this.limits.maxRendered ?? Infinity;
    if (this.rendered + 1 > max)
      throw RequestBudget.over(
        'rendered images (mask, overlay, annotatedImage, photos decoded for objects.classify)',
        max,
        'MAX_RENDERED_IMAGES_PER_REQUEST',
        'ask for fewer of them, or for the others in another request',
      );
    this.rendered++;
  }

  /** Take n labels of the answer (a model's list of them), or LIMIT_EXCEEDED when they would go past MAX_LABELS. */
  takeLabels(n: number): void {
    if (this.labels + n > RequestBudget.MAX_LABELS)
      throw new GatewayError(
        ErrorCode.LIMIT_EXCEEDED,
        `more than ${RequestBudget.MAX_LABELS} labels in one answer (the largest labels map, once): ask for the labels of fewer models, or in another request`,
      );
    this.labels += n;
  }

  /** Take n bytes of the response (a tensor's or an image's encoded size). */
  takeResponseBytes(n: number): void {
    const max = this.limits.maxResponseBytes ?? Infinity;
    if (this.responseBytes + n > max)
      throw RequestBudget.over(
        'bytes of tensors and images',
        max,
        'MAX_RESPONSE_BYTES',
        'ask for fewer or smaller outputs, or fewer images per request',
      );
    this.responseBytes += n;
  }

  /** Take n bytes of input (tensors, images). */
  takeInputBytes(n: number): void {
    const max = this.limits.maxInputBytes ?? Infinity;
    if (this.inputBytes + n > max)
      throw RequestBudget.over(
        'bytes of input, images and tensors',
        max,
        'MAX_UPLOAD_BYTES',
        'send fewer or smaller images or tensors per request',
      );
    this.inputBytes += n;
  }

  /** Take n bytes of a file the server reads for the request: input bytes, and held memory until it is answered. */
  takeFileBytes(n: number): void {
    this.takeInputBytes(n);
    const refused = this.memory?.take(n);
    if (refused) {
      this.inputBytes -= n; // not read: the rest of the request may still read what it would have
      throw refused;
    }
  }

  /** CANCELLED when the client has gone away (nobody will read the answer). */
  checkAlive(): void {
    if (this.signal?.aborted) throw clientGone();
  }
}
