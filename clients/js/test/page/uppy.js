// Uppy in the test page. Bundled twice (test/support/page.js): once with @uppy/core mapped to
// Uppy 4, once to Uppy 6; `UPPY_MAJOR` is defined per bundle.
import { createUppy4Adapter, createUppy6Adapter } from '../../src/index.js'
import { describeError, makeFile } from './common.js'
import Uppy from '@uppy/core'
import AwsS3 from '@uppy/aws-s3'

/* global UPPY_MAJOR */
const createAdapter = UPPY_MAJOR === 6 ? createUppy6Adapter : createUppy4Adapter

window[`kzUppy${UPPY_MAJOR}`] = {
  async upload({ gatewayUrl, token, name, type, size, seed, source }) {
    const uppy = new Uppy({ autoProceed: false })
    const adapter = createAdapter(uppy, { gatewayUrl, token, source })
    uppy.use(AwsS3, adapter.options)
    const events = { successBodies: [], confirmed: [], confirmErrors: [], uploadErrors: [] }
    uppy.on('upload-success', (_file, response) => events.successBodies.push(response?.body ?? null))
    uppy.on('kizen:confirmed', (_file, s3object) => events.confirmed.push(s3object))
    uppy.on('kizen:confirm-error', (_file, error) => events.confirmErrors.push(describeError(error)))
    uppy.on('upload-error', (_file, error) => events.uploadErrors.push(describeError(error)))
    try {
      uppy.addFile({ name, type, data: makeFile(name, type, size, seed) })
      const result = await uppy.upload()
      const file = uppy.getFiles()[0]
      return {
        version: Uppy.VERSION,
        pluginVersion: AwsS3.VERSION,
        successful: result?.successful?.length ?? 0,
        failed: result?.failed?.length ?? 0,
        s3object: file?.kizen?.s3object ?? null,
        events,
      }
    } catch (error) {
      return { error: describeError(error), events }
    } finally {
      adapter.dispose()
      uppy.destroy()
    }
  },
}
