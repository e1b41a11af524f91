// Helpers shared by the test page's bundles.

/** A file of `size` bytes, byte i = (i * 31 + seed) mod 256 (the Node side checks the same). */
export function makeFile(name, type, size, seed) {
  const bytes = new Uint8Array(size)
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + seed) & 255
  return new File([bytes], name, { type })
}

/** What the Node side reads of an error. */
export function describeError(error) {
  return {
    name: error?.name,
    message: String(error?.message ?? error),
    status: error?.status,
    code: error?.code,
    step: error?.step,
  }
}
