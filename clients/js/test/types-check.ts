// Compiled by `npm run typecheck` only: the declarations accept the documented uses.
import {
  KizenUploadError,
  createClient,
  createUppy4Adapter,
  createUppy6Adapter,
  uploadFile,
  type S3Object,
  type UppyLike,
} from '@kizen-gateway/client'

declare const file: File
declare const uppy: UppyLike

async function recipes(): Promise<S3Object> {
  const controller = new AbortController()
  const object = await uploadFile(file, {
    gatewayUrl: 'https://uploads.example.com',
    getToken: async () => 'jwt',
    source: 'field_value',
    signal: controller.signal,
    onProgress: ({ step, loaded, total }) => console.log(step, loaded / total),
  })
  const client = createClient({ token: 'jwt', confirmRetry: { retries: 2 } })
  const presigned = await client.presign({ filename: 'a.png', contentType: 'image/png', source: 'field_value' })
  const { etag } = await client.postToS3(presigned, file)
  await client.confirm({ uuid: presigned.s3object_id, key: presigned.fields.key, name: 'a.png', etag })
  const six = createUppy6Adapter(uppy, { token: 'jwt', source: 'field_value' })
  const signed = await six.options.signRequest({ method: 'PUT', key: 'uppy-file-id' })
  signed.fields.key.toUpperCase()
  const four = createUppy4Adapter(uppy, { client, source: 'field_value' })
  four.dispose()
  try {
    return object
  } catch (error) {
    if (error instanceof KizenUploadError && error.code === 'upload_not_found') throw error
    throw error
  }
}
void recipes
