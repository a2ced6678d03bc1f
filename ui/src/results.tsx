import { useEffect, useRef } from 'preact/hooks';
import type { Result } from './api.ts';

type Of<T extends Result['task']> = Extract<Result, { task: T }>;

/** One colour per class id, the same in boxes, masks and legends. */
export function classColor(classId: number): [number, number, number] {
  const h = ((classId * 137.508) % 360) / 360;
  // HSL (s 0.75, l 0.5) to RGB
  const f = (n: number) => {
    const k = (n + h * 12) % 12;
    return Math.round(255 * (0.5 - 0.375 * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}
const css = (id: number, alpha = 1) => `rgba(${classColor(id).join(', ')}, ${alpha})`;
const percent = (x: number) => `${(x * 100).toFixed(x >= 0.995 || x < 0.1 ? 1 : 0)}%`;
const name = (p: { classId: number; label: string | null }) => p.label || `class ${p.classId}`;

export function Classification({ result }: { result: Of<'classification'> }) {
  return (
    <ol class="predictions">
      {result.predictions.map((p) => (
        <li class="prediction" key={p.classId}>
          <span class="label" title={p.label ?? ''}>
            {name(p)}
          </span>
          <span class="bar">
            <span style={{ width: `${Math.max(p.confidence * 100, 0.5)}%` }} />
          </span>
          <span class="confidence">{percent(p.confidence)}</span>
        </li>
      ))}
      {result.predictions.length === 0 && <li class="muted">nothing above the threshold</li>}
    </ol>
  );
}

export function Detection({ picture, result }: { picture: string; result: Of<'detection'> }) {
  return (
    <>
      <div class="viewer">
        <img src={picture} alt="" />
        <div class="overlay">
          {result.objects.map((o, i) => (
            <div
              class="box"
              key={i}
              style={{
                left: `${o.box.xMin * 100}%`,
                top: `${o.box.yMin * 100}%`,
                width: `${(o.box.xMax - o.box.xMin) * 100}%`,
                height: `${(o.box.yMax - o.box.yMin) * 100}%`,
                borderColor: css(o.classId),
              }}
            >
              <span class="box-label" style={{ background: css(o.classId) }} title={name(o)}>
                <bdi>{name(o)}</bdi> {percent(o.confidence)}
              </span>
            </div>
          ))}
        </div>
      </div>
      <ul class="objects">
        {result.objects.map((o, i) => (
          <li key={i} title={name(o)}>
            <i class="swatch" style={{ background: css(o.classId) }} /> <bdi>{name(o)}</bdi>{' '}
            <span class="muted">{percent(o.confidence)}</span>
          </li>
        ))}
        {result.objects.length === 0 && <li class="muted">no objects found</li>}
      </ul>
    </>
  );
}

/**
 * The mask comes as a PNG with one class id per pixel (grey); it is coloured here, class 0 (background) left clear,
 * and laid over the photo. (A browser decodes 16-bit PNGs to 8 bits, so ids above 255 would not come through: no
 * served model has that many classes.)
 */
export function Segmentation({ picture, result }: { picture: string; result: Of<'segmentation'> }) {
  const canvas = useRef<HTMLCanvasElement>(null);
  useEffect(() => {
    // no mask in a partial answer (its error says why): the photo shows without one, not with the one before
    if (result.mask === null) return;
    const mask = new Image();
    let live = true;
    mask.onload = () => {
      const c = canvas.current;
      if (!live || !c) return;
      c.width = mask.naturalWidth;
      c.height = mask.naturalHeight;
      const ctx = c.getContext('2d', { willReadFrequently: true })!;
      ctx.drawImage(mask, 0, 0);
      const img = ctx.getImageData(0, 0, c.width, c.height);
      const px = img.data;
      const colors = new Map<number, [number, number, number]>();
      for (let i = 0; i < px.length; i += 4) {
        const id = px[i];
        if (id === 0) {
          px[i + 3] = 0;
          continue;
        }
        let rgb = colors.get(id);
        if (!rgb) colors.set(id, (rgb = classColor(id)));
        px[i] = rgb[0];
        px[i + 1] = rgb[1];
        px[i + 2] = rgb[2];
        px[i + 3] = 150;
      }
      ctx.putImageData(img, 0, 0);
    };
    mask.src = `data:image/png;base64,${result.mask}`;
    return () => {
      live = false;
    };
  }, [result.mask]);
  return (
    <>
      <div class="viewer">
        <img src={picture} alt="" />
        {result.mask !== null && <canvas class="mask overlay" ref={canvas} />}
      </div>
      <ul class="classes">
        {result.classes.map((c) => (
          <li class="segment-class" key={c.classId}>
            <i class="swatch" style={{ background: c.classId === 0 ? 'transparent' : css(c.classId) }} />
            <span class="label">{name(c)}</span>
            <span class="bar">
              <span style={{ width: `${c.pixelFraction * 100}%`, background: c.classId === 0 ? '#9ca3af' : css(c.classId) }} />
            </span>
            <span class="confidence">{percent(c.pixelFraction)}</span>
          </li>
        ))}
      </ul>
    </>
  );
}
