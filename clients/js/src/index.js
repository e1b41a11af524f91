// @kizen-gateway/client: upload files from a browser through kizen-gateway.
//
// Three steps: presign (the gateway asks Kizen for a presigned S3 POST), a multipart POST straight
// to S3 (every presigned field first, the file last), then confirm (the gateway forwards it to
// Kizen once, for the user it issued the upload to). No dependencies; runs in any browser with
// fetch, XMLHttpRequest, FormData and AbortController.

const PRESIGN_PATH = '/api/s3/presigned-post'
const CONFIRM_PATH = '/api/s3/success'

/** Default retry policy of confirmations. */
export const DEFAULT_CONFIRM_RETRY = Object.freeze({
  retries: 5,
  baseDelayMs: 250,
  maxDelayMs: 8000,
  maxRetryAfterMs: 30000,
})

/**
 * Every failure of this client: `step` says where (`presign`, `upload`, `confirm`), `status` is
 * the HTTP status (0 for a network error), `code` the gateway problem's `code` (for example
 * `upload_not_found`), S3's error `<Code>` (for example `EntityTooLarge`) or one of this client's
 * own (`network_error`, `etag_unreadable`, `bad_response`).
 */
export class KizenUploadError extends Error {
  constructor(message, { step, status = 0, code, problem, retryAfterMs, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause })
    this.name = 'KizenUploadError'
    this.step = step
    this.status = status
    this.code = code
    this.problem = problem
    this.retryAfterMs = retryAfterMs
  }
}

function abortError(signal) {
  return signal?.reason ?? new DOMException('The upload was aborted.', 'AbortError')
}

function isAbort(error) {
  return error?.name === 'AbortError'
}

function throwIfAborted(signal) {
  if (signal?.aborted) throw abortError(signal)
}

/** `Retry-After` in milliseconds (delta-seconds or an HTTP date), or `undefined`. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null || value === '') return undefined
  const trimmed = String(value).trim()
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000
  const date = Date.parse(trimmed)
  return Number.isNaN(date) ? undefined : Math.max(0, date - now)
}

/**
 * Whether a failed confirmation may be sent again: network errors, 5xx, `409
 * confirmation_in_progress` and a 429 with a `Retry-After` no longer than `maxRetryAfterMs`.
 * Never a verdict such as 400, 401, 403, 404, 410 or `409 already_confirmed`.
 */
export function isRetryableConfirmError(error, policy = DEFAULT_CONFIRM_RETRY) {
  if (!(error instanceof KizenUploadError)) return false
  if (error.code === 'network_error') return true
  if (error.status >= 500) return true
  if (error.status === 409) return error.code !== 'already_confirmed'
  if (error.status === 429) {
    return error.retryAfterMs !== undefined && error.retryAfterMs <= policy.maxRetryAfterMs
  }
  return false
}

/** Full jitter: a random delay in [0, min(max, base * 2^attempt)], at least Retry-After. */
export function backoffDelay(attempt, policy = DEFAULT_CONFIRM_RETRY, retryAfterMs, random = Math.random) {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** attempt)
  const jittered = Math.round(random() * ceiling)
  return retryAfterMs === undefined ? jittered : Math.max(retryAfterMs, jittered)
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal))
    const onAbort = () => {
      clearTimeout(timer)
      reject(abortError(signal))
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

async function problemError(step, response) {
  let problem
  const text = await response.text().catch(() => '')
  try {
    problem = JSON.parse(text)
  } catch {
    problem = undefined
  }
  const code = typeof problem?.code === 'string' ? problem.code : `http_${response.status}`
  const detail = typeof problem?.detail === 'string' ? problem.detail : response.statusText
  return new KizenUploadError(`${step} failed: ${response.status} ${code}${detail ? `: ${detail}` : ''}`, {
    step,
    status: response.status,
    code,
    problem,
    retryAfterMs: parseRetryAfter(response.headers.get('retry-after')),
  })
}

/** S3's error answer `<Error><Code>..</Code><Message>..</Message></Error>`, read without a DOM. */
export function parseS3Error(xml) {
  const pick = (tag) => {
    const match = new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`).exec(xml ?? '')
    return match ? match[1].replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, '&') : undefined
  }
  return { code: pick('Code'), message: pick('Message') }
}

/**
 * A client of one gateway. `token` is a fixed bearer token; `getToken` is called before every
 * gateway request (return a fresh token there when yours expire).
 */
export function createClient({ gatewayUrl = '', token, getToken, fetch: fetchImpl, confirmRetry } = {}) {
  if (token == null && getToken == null) throw new TypeError('createClient: token or getToken is required')
  const base = String(gatewayUrl).replace(/\/+$/, '')
  const doFetch = fetchImpl ?? ((...args) => globalThis.fetch(...args))
  const retryPolicy = { ...DEFAULT_CONFIRM_RETRY, ...confirmRetry }

  async function authorization() {
    const value = getToken ? await getToken() : token
    if (!value) throw new KizenUploadError('no token to authenticate with', { step: 'auth', code: 'token_missing' })
    return `Bearer ${value}`
  }

  async function gatewayRequest(step, url, init, signal) {
    let response
    try {
      response = await doFetch(url, { ...init, signal, credentials: 'omit' })
    } catch (error) {
      if (isAbort(error) || signal?.aborted) throw abortError(signal)
      throw new KizenUploadError(`${step} failed: network error`, { step, code: 'network_error', cause: error })
    }
    if (!response.ok) throw await problemError(step, response)
    try {
      return await response.json()
    } catch (error) {
      throw new KizenUploadError(`${step} failed: the answer is not JSON`, { step, status: response.status, code: 'bad_response', cause: error })
    }
  }

  /** Step 1: a presigned POST for `filename` of `contentType`. */
  async function presign({ filename, contentType, source, signal }) {
    throwIfAborted(signal)
    const query = new URLSearchParams({ contenttype: contentType, filename, source })
    const presigned = await gatewayRequest(
      'presign',
      `${base}${PRESIGN_PATH}?${query}`,
      { method: 'GET', headers: { Authorization: await authorization(), Accept: 'application/json' } },
      signal,
    )
    if (typeof presigned?.url !== 'string' || typeof presigned?.fields !== 'object' || typeof presigned?.s3object_id !== 'string') {
      throw new KizenUploadError('presign failed: unexpected answer', { step: 'presign', status: 200, code: 'bad_response' })
    }
    return presigned
  }

  /** One confirmation attempt, no retry. */
  async function confirmOnce({ uuid, key, name, etag, isPublic }, { signal } = {}) {
    throwIfAborted(signal)
    const form = new URLSearchParams({ uuid, key, name, etag })
    if (isPublic !== undefined) form.set('is_public', isPublic ? 'true' : 'false')
    return gatewayRequest(
      'confirm',
      `${base}${CONFIRM_PATH}`,
      {
        method: 'POST',
        headers: {
          Authorization: await authorization(),
          Accept: 'application/json',
          'Content-Type': 'application/x-www-form-urlencoded',
        },
        body: form.toString(),
      },
      signal,
    )
  }

  /**
   * Step 3: confirm, retrying with jittered exponential backoff on network errors, 5xx, 409
   * `confirmation_in_progress` and 429 with `Retry-After`; any other refusal is final.
   */
  async function confirm(upload, { signal, onRetry } = {}) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await confirmOnce(upload, { signal })
      } catch (error) {
        if (attempt >= retryPolicy.retries || !isRetryableConfirmError(error, retryPolicy)) throw error
        const delay = backoffDelay(attempt, retryPolicy, error.retryAfterMs)
        onRetry?.({ attempt: attempt + 1, delayMs: delay, error })
        await sleep(delay, signal)
      }
    }
  }

  /** All three steps for one file; resolves to Kizen's stored S3Object. */
  async function upload(file, { source, filename, contentType, signal, onProgress, isPublic, onRetry } = {}) {
    if (!source) throw new TypeError('uploadFile: source is required')
    const name = filename ?? file.name
    const type = contentType || file.type || 'application/octet-stream'
    onProgress?.({ step: 'presign', loaded: 0, total: file.size })
    const presigned = await presign({ filename: name, contentType: type, source, signal })
    const { etag } = await postToS3(presigned, file, { signal, onProgress })
    onProgress?.({ step: 'confirm', loaded: file.size, total: file.size })
    return confirm(
      { uuid: presigned.s3object_id, key: presigned.fields.key, name, etag, isPublic },
      { signal, onRetry },
    )
  }

  return { presign, postToS3, confirm, confirmOnce, uploadFile: upload, retryPolicy }
}

/**
 * Step 2: the multipart POST to S3, every presigned field first and the file last, with upload
 * progress and abort. Resolves to `{ etag, location }` (the ETag as S3 sent it, quotes included).
 */
export function postToS3(presigned, file, { signal, onProgress } = {}) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal))
    const form = new FormData()
    for (const [name, value] of Object.entries(presigned.fields)) form.append(name, value)
    form.append('file', file)
    const xhr = new XMLHttpRequest()
    const onAbort = () => xhr.abort()
    const done = () => signal?.removeEventListener('abort', onAbort)
    xhr.open('POST', presigned.url, true)
    xhr.responseType = 'text'
    if (onProgress) {
      // An upload listener makes the cross-origin POST preflighted: the bucket's CORS must allow it.
      xhr.upload.addEventListener('progress', (event) => {
        if (!event.lengthComputable || event.total === 0) return
        const loaded = Math.min(file.size, Math.round((event.loaded / event.total) * file.size))
        onProgress({ step: 'upload', loaded, total: file.size })
      })
    }
    xhr.addEventListener('load', () => {
      done()
      if (xhr.status < 200 || xhr.status >= 300) {
        const { code, message } = parseS3Error(xhr.responseText)
        reject(new KizenUploadError(`upload failed: ${xhr.status} ${code ?? ''}${message ? `: ${message}` : ''}`.trim(), {
          step: 'upload',
          status: xhr.status,
          code: code ?? `http_${xhr.status}`,
          problem: xhr.responseText,
        }))
        return
      }
      const etag = xhr.getResponseHeader('ETag')
      if (!etag) {
        reject(new KizenUploadError('upload succeeded but its ETag is unreadable: the bucket CORS must expose ETag (ExposeHeaders)', {
          step: 'upload',
          status: xhr.status,
          code: 'etag_unreadable',
        }))
        return
      }
      onProgress?.({ step: 'upload', loaded: file.size, total: file.size })
      resolve({ etag, location: xhr.getResponseHeader('Location') ?? undefined })
    })
    xhr.addEventListener('error', () => {
      done()
      reject(new KizenUploadError('upload failed: network error (or a CORS refusal)', { step: 'upload', code: 'network_error' }))
    })
    xhr.addEventListener('abort', () => {
      done()
      reject(abortError(signal))
    })
    signal?.addEventListener('abort', onAbort, { once: true })
    xhr.send(form)
  })
}

/** One upload without keeping a client: `createClient(options).uploadFile(file, options)`. */
export function uploadFile(file, options = {}) {
  const { source, signal, onProgress, filename, contentType, isPublic, onRetry, ...clientOptions } = options
  return createClient(clientOptions).uploadFile(file, { source, signal, onProgress, filename, contentType, isPublic, onRetry })
}

// ---------------------------------------------------------------------------------------------
// ETag recorder: Uppy 6's AwsS3 plugin reads S3's ETag but drops it before `upload-success`. The
// adapter watches the XMLHttpRequests whose multipart body names a key it presigned, and reads
// the ETag header of their answers itself. XMLHttpRequest.prototype.send is wrapped while at least
// one recorder is open, and restored when the last one closes.

const recorders = new Set()
let originalSend

function installSendHook() {
  if (originalSend || typeof XMLHttpRequest === 'undefined') return
  originalSend = XMLHttpRequest.prototype.send
  const original = originalSend
  XMLHttpRequest.prototype.send = function send(body) {
    if (typeof FormData !== 'undefined' && body instanceof FormData) {
      const key = body.get('key')
      if (typeof key === 'string') {
        for (const recorder of recorders) recorder._watch(this, key)
      }
    }
    return original.call(this, body)
  }
}

function removeSendHook() {
  if (originalSend && recorders.size === 0) {
    XMLHttpRequest.prototype.send = originalSend
    originalSend = undefined
  }
}

/**
 * Records the ETag S3 answers for the keys `expect`ed; `close` stops recording. The header is
 * read as soon as the answer's headers arrive (before `load`, so before the uploader's own
 * handlers have run); `etagFor(key)` waits for the watched request to end.
 */
export function createEtagRecorder() {
  const expected = new Set()
  const seen = new Map()
  const recorder = {
    expect(key) {
      expected.add(key)
    },
    /** Resolves to the ETag of the last watched POST of `key`, or undefined (none, unreadable). */
    etagFor(key) {
      const entry = seen.get(key)
      if (!entry) return Promise.resolve(undefined)
      if (!entry.pending) return Promise.resolve(entry.etag)
      return new Promise((resolve) => entry.waiters.push(resolve))
    },
    forget(key) {
      expected.delete(key)
      seen.delete(key)
    },
    close() {
      recorders.delete(recorder)
      removeSendHook()
    },
    _watch(xhr, key) {
      if (!expected.has(key)) return
      const entry = { etag: undefined, pending: true, waiters: [] }
      seen.set(key, entry)
      const settle = () => {
        if (!entry.pending) return
        entry.pending = false
        for (const resolve of entry.waiters.splice(0)) resolve(entry.etag)
      }
      xhr.addEventListener('readystatechange', () => {
        if (xhr.readyState < 2 || !entry.pending) return
        if (xhr.status >= 200 && xhr.status < 300) entry.etag = xhr.getResponseHeader('ETag') ?? undefined
        settle()
      })
      xhr.addEventListener('loadend', settle)
    },
  }
  recorders.add(recorder)
  installSendHook()
  return recorder
}

// ---------------------------------------------------------------------------------------------
// Uppy adapters. Both presign through the gateway, let @uppy/aws-s3 POST the file, and confirm
// on `upload-success`; `await uppy.upload()` resolves once the confirmations are settled (a
// post-processor waits for them). A confirmed file gets `file.kizen = { s3object }` and the event
// `kizen:confirmed` (file, s3object); a failed confirmation marks the file failed
// (`upload-error`) and emits `kizen:confirm-error` (file, error).

function createUppyAdapter(uppy, options, { recordEtags }) {
  const { source, isPublic, onRetry } = options
  if (!source) throw new TypeError('Kizen Uppy adapter: source is required')
  const client = options.client ?? createClient(options)
  const presignedByFile = new Map()
  const confirmations = new Map()
  const recorder = recordEtags ? createEtagRecorder() : undefined

  async function presignFor(file, signal) {
    const presigned = await client.presign({
      filename: file.name,
      contentType: file.type || 'application/octet-stream',
      source: file.meta?.kizenSource ?? source,
      signal,
    })
    presignedByFile.set(file.id, presigned)
    recorder?.expect(presigned.fields.key)
    return presigned
  }

  async function etagOf(response, key) {
    const body = response?.body ?? {}
    return body.ETag ?? body.etag ?? (await recorder?.etagFor(key))
  }

  const onSuccess = (file, response) => {
    const presigned = presignedByFile.get(file.id)
    if (!presigned) return
    const key = presigned.fields.key
    const confirmation = (async () => {
      const etag = await etagOf(response, key)
      if (!etag) {
        throw new KizenUploadError('upload succeeded but its ETag is unreadable: the bucket CORS must expose ETag (ExposeHeaders)', { step: 'upload', code: 'etag_unreadable' })
      }
      return client.confirm({ uuid: presigned.s3object_id, key, name: file.name, etag, isPublic }, { onRetry })
    })().then(
      (s3object) => {
        presignedByFile.delete(file.id)
        recorder?.forget(key)
        if (uppy.getFile(file.id)) uppy.setFileState(file.id, { kizen: { s3object } })
        uppy.emit('kizen:confirmed', uppy.getFile(file.id) ?? file, s3object)
        return { ok: true, s3object }
      },
      (error) => {
        recorder?.forget(key)
        uppy.emit('kizen:confirm-error', uppy.getFile(file.id) ?? file, error)
        if (uppy.getFile(file.id)) uppy.emit('upload-error', uppy.getFile(file.id), error)
        return { ok: false, error }
      },
    )
    confirmations.set(file.id, confirmation)
  }

  const waitForConfirmations = async (fileIDs) => {
    await Promise.all(fileIDs.map((id) => confirmations.get(id)).filter(Boolean))
    for (const id of fileIDs) confirmations.delete(id)
  }

  uppy.on('upload-success', onSuccess)
  uppy.addPostProcessor(waitForConfirmations)

  return {
    client,
    presignFor,
    /** Stops confirming for this Uppy and releases the ETag recorder. */
    dispose() {
      uppy.off('upload-success', onSuccess)
      uppy.removePostProcessor(waitForConfirmations)
      recorder?.close()
    },
  }
}

/**
 * Uppy 6 (`@uppy/aws-s3` 6): `uppy.use(AwsS3, adapter.options)`. Its `signRequest` presigns
 * through the gateway and answers `{ url, fields }`, so the plugin sends an S3 POST policy form.
 * Uppy 6 does not pass S3's ETag on, so the adapter reads it from the S3 answer itself.
 */
export function createUppy6Adapter(uppy, options = {}) {
  const adapter = createUppyAdapter(uppy, options, { recordEtags: true })
  const pluginOptions = {
    shouldUseMultipart: false,
    // The plugin's key only names the file for signRequest; the gateway's presign picks the real one.
    generateObjectKey: (file) => file.id,
    async signRequest(request) {
      if (request.method !== 'PUT' || request.uploadId !== undefined) {
        throw new TypeError(`Kizen uploads are single S3 POSTs; cannot sign ${request.method} ${request.key}`)
      }
      const file = uppy.getFile(request.key)
      if (!file) throw new TypeError(`no Uppy file ${request.key}`)
      const presigned = await adapter.presignFor(file)
      return { url: presigned.url, fields: presigned.fields }
    },
  }
  return { options: pluginOptions, client: adapter.client, dispose: adapter.dispose }
}

/**
 * Uppy 4 (`@uppy/aws-s3` 4): `uppy.use(AwsS3, adapter.options)`. Its `getUploadParameters`
 * presigns through the gateway and answers `{ method: 'POST', url, fields }`; the plugin reads
 * the ETag from S3's answer (the bucket must expose it).
 */
export function createUppy4Adapter(uppy, options = {}) {
  const adapter = createUppyAdapter(uppy, options, { recordEtags: false })
  const pluginOptions = {
    shouldUseMultipart: false,
    async getUploadParameters(file, { signal } = {}) {
      const presigned = await adapter.presignFor(file, signal)
      return { method: 'POST', url: presigned.url, fields: presigned.fields, headers: {} }
    },
  }
  return { options: pluginOptions, client: adapter.client, dispose: adapter.dispose }
}
