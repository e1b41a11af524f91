// The plain client in the test page: window.kzFetch.
import { createClient, uploadFile } from '../../src/index.js'
import { describeError, makeFile } from './common.js'

window.kzFetch = {
  /** uploadFile, with its progress and retries recorded. */
  async upload({ gatewayUrl, token, name, type, size, seed, source, confirmRetry, abortOnProgress }) {
    const progress = []
    const retries = []
    const controller = new AbortController()
    try {
      const s3object = await uploadFile(makeFile(name, type, size, seed), {
        gatewayUrl,
        token,
        source,
        confirmRetry,
        signal: controller.signal,
        onProgress: (p) => {
          progress.push(p)
          if (abortOnProgress && p.step === 'upload') controller.abort()
        },
        onRetry: ({ attempt, delayMs, error }) => retries.push({ attempt, delayMs, status: error.status, code: error.code }),
      })
      return { ok: true, s3object, progress, retries }
    } catch (error) {
      return { ok: false, error: describeError(error), progress, retries }
    }
  },

  /** Presign and upload, no confirmation: the upload another user will try to confirm. */
  async presignAndPost({ gatewayUrl, token, name, type, size, seed, source }) {
    const client = createClient({ gatewayUrl, token })
    const presigned = await client.presign({ filename: name, contentType: type, source })
    const { etag } = await client.postToS3(presigned, makeFile(name, type, size, seed))
    return { uuid: presigned.s3object_id, key: presigned.fields.key, name, etag }
  },

  /** One confirmation attempt (no retry) as the owner of `token`. */
  async confirmOnce({ gatewayUrl, token, upload }) {
    try {
      return { ok: true, s3object: await createClient({ gatewayUrl, token }).confirmOnce(upload) }
    } catch (error) {
      return { ok: false, error: describeError(error) }
    }
  },
}
