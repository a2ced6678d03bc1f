/**
 * The image formats read unless the operator says otherwise (IMAGE_FORMATS): not AVIF and HEIF, whose AV1 decoding
 * (libheif) takes seconds for a 40 MP image of a few kilobytes (1.8 s for a flat one, 5 s for a noisy one, measured
 * on this project's 2-core VM) and cannot be interrupted by DECODE_TIMEOUT_MS, nor SVG, whose rendering can be made
 * arbitrarily costly.
 */
export const DEFAULT_IMAGE_FORMATS: readonly string[] = ['jpeg', 'png', 'webp', 'gif', 'tiff'];
