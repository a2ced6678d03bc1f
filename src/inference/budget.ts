import { ErrorCode, GatewayError } from '../errors.ts';

/**
 * What one request may spend: images (and raw inferences) per request. Every protocol makes one per request and
 * takes from it before any work starts, so aliases, lists and nested pipelines are counted as they execute.
 */
export class RequestBudget {
  private images = 0;
  constructor(readonly maxImages: number) {}

  /** Take n images, or LIMIT_EXCEEDED (nothing taken) when they would go past the limit. */
  takeImages(n = 1): void {
    if (this.images + n > this.maxImages)
      throw new GatewayError(ErrorCode.LIMIT_EXCEEDED, `more than ${this.maxImages} images or inferences in one request`);
    this.images += n;
  }
}
