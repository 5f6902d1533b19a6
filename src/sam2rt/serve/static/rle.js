// Masks as the server sends them: COCO compressed RLE (column-major runs), painted into an RGBA overlay.
"use strict";

// The run lengths of a COCO compressed RLE string (the LEB128-like code of pycocotools).
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let value = 0, shift = 0, more = true, c = 0;
    while (more) {
      c = text.charCodeAt(p) - 48;
      value |= (c & 0x1f) << (5 * shift);
      more = (c & 0x20) !== 0;
      p += 1;
      shift += 1;
      if (!more && (c & 0x10)) value |= -1 << (5 * shift);
    }
    if (counts.length > 2) value += counts[counts.length - 2];
    counts.push(value);
  }
  return counts;
}

// A mask (Uint8Array, row-major, height x width) from an RLE {size: [h, w], counts}.
function decodeRle(rle) {
  const [height, width] = rle.size;
  const mask = new Uint8Array(height * width);
  const counts = rleCounts(rle.counts);
  let index = 0;
  for (let k = 0; k < counts.length; k++) {
    const run = counts[k];
    if (k % 2 === 1) {
      for (let i = index; i < index + run; i++) {
        const x = Math.floor(i / height), y = i - x * height;  // column-major order
        mask[y * width + x] = 1;
      }
    }
    index += run;
  }
  return mask;
}

// The colour of object `id`: golden-ratio steps in hue, as the overlay video of the exports draws it.
function objectColor(id) {
  const hue = (id * 0.6180339887) % 1.0, s = 0.85, v = 1.0;
  const i = Math.floor(hue * 6), f = hue * 6 - i;
  const p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  const [r, g, b] = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
  return [Math.floor(r * 255), Math.floor(g * 255), Math.floor(b * 255)];
}

// Paint masks into `image` (ImageData): translucent fill, opaque outline. Returns each object's centroid.
function paintMasks(image, objects) {
  const { width, height, data } = image;
  const centres = [];
  for (const obj of objects) {
    const mask = obj.mask, [r, g, b] = objectColor(obj.id);
    let sx = 0, sy = 0, n = 0;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = y * width + x;
        if (!mask[i]) continue;
        const edge = x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
          !mask[i - 1] || !mask[i + 1] || !mask[i - width] || !mask[i + width];
        data[4 * i] = r; data[4 * i + 1] = g; data[4 * i + 2] = b; data[4 * i + 3] = edge ? 255 : 128;
        sx += x; sy += y; n += 1;
      }
    }
    if (n) centres.push({ id: obj.id, x: sx / n, y: sy / n });
  }
  return centres;
}
