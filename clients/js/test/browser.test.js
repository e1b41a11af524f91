// The client in a real browser (Debian's Chromium, headless, driven by playwright-core) against
// the real gateway binary in dev mode: its stand-in of Kizen plays the Kizen API and S3 storage.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'
import { gatewayBinary, startDevGateway } from './support/gateway.js'
import { buildBundles, servePage } from './support/page.js'

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium'
// The network is closed: without these Chromium waits on connections it will never make.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]
const MAX_FILE_SIZE = 10 * 1024 * 1024 // the dev stand-in's policy limit

/** The bytes common.js's makeFile makes. */
function expectedBytes(size, seed) {
  const bytes = Buffer.alloc(size)
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + seed) & 255
  return bytes
}

describe('the client in Chromium against kizen-gateway dev mode', () => {
  let page, context, profileDir, site, gw
  const pageRequests = []

  before(async () => {
    const bin = gatewayBinary()
    site = await servePage(await buildBundles())
    gw = await startDevGateway(bin, { origin: site.origin })
    profileDir = await mkdtemp(join(tmpdir(), 'kizen-client-chromium-'))
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
    })
    page = context.pages()[0] ?? (await context.newPage())
    page.on('request', (request) => pageRequests.push(request))
    page.on('pageerror', (error) => console.error('page error:', error))
    await page.goto(`${site.origin}/`)
    await page.waitForFunction(() => window.kzFetch && window.kzUppy4 && window.kzUppy6)
  })

  after(async () => {
    await context?.close()
    await gw?.stop()
    await site?.close()
    if (profileDir) await rm(profileDir, { recursive: true, force: true })
  })

  const upload = (overrides) => ({
    gatewayUrl: gw.gatewayUrl,
    token: gw.token,
    source: 'field_value',
    type: 'application/octet-stream',
    ...overrides,
  })

  /** The object is stored with exactly the page's bytes, and Kizen got one confirmation for it. */
  async function assertStoredAndConfirmedOnce(s3object, size, seed) {
    const stored = await gw.object(s3object.key)
    assert.equal(stored.status, 200, `no object stored under ${s3object.key}`)
    assert.equal(stored.bytes.length, size)
    assert.ok(stored.bytes.equals(expectedBytes(size, seed)), 'the stored bytes differ from the file')
    const confirmations = await gw.confirmationsOf(s3object.id)
    assert.equal(confirmations.length, 1, 'Kizen should get exactly one confirmation')
    const form = new URLSearchParams(confirmations[0].body)
    assert.equal(form.get('key'), s3object.key)
    assert.equal(form.get('etag'), stored.etag, 'the confirmation must carry the ETag S3 answered')
    assert.equal(s3object.size_bytes, size)
  }

  test('plain fetch client: presign, POST with progress, confirm', async () => {
    const size = 300 * 1024 + 7
    const result = await page.evaluate((args) => window.kzFetch.upload(args), upload({ name: 'fetch.bin', size, seed: 1 }))
    assert.ok(result.ok, JSON.stringify(result.error))
    await assertStoredAndConfirmedOnce(result.s3object, size, 1)
    const uploadProgress = result.progress.filter((p) => p.step === 'upload')
    assert.ok(uploadProgress.length > 0, 'no upload progress reported')
    assert.deepEqual(uploadProgress.at(-1), { step: 'upload', loaded: size, total: size })
    assert.deepEqual(result.retries, [])
  })

  test('Uppy 6 (@uppy/aws-s3 6, signRequest): confirms with the ETag read from the S3 answer', async () => {
    const size = 200 * 1024 + 3
    const result = await page.evaluate((args) => window.kzUppy6.upload(args), upload({ name: 'uppy6.bin', size, seed: 6 }))
    assert.equal(result.error, undefined, JSON.stringify(result.error))
    assert.match(result.version, /^6\./)
    assert.match(result.pluginVersion, /^6\./)
    assert.equal(result.successful, 1, JSON.stringify(result.events))
    assert.equal(result.failed, 0)
    // Uppy 6 passes no ETag on: the adapter's own reading of the S3 answer is what confirms.
    assert.equal(result.events.successBodies.length, 1)
    assert.equal(result.events.successBodies[0].etag, undefined)
    assert.equal(result.events.successBodies[0].ETag, undefined)
    assert.deepEqual(result.events.confirmed, [result.s3object])
    await assertStoredAndConfirmedOnce(result.s3object, size, 6)
  })

  test('Uppy 4 (@uppy/aws-s3 4, getUploadParameters): confirms on upload-success', async () => {
    const size = 150 * 1024 + 11
    const result = await page.evaluate((args) => window.kzUppy4.upload(args), upload({ name: 'uppy4.bin', size, seed: 4 }))
    assert.equal(result.error, undefined, JSON.stringify(result.error))
    assert.match(result.version, /^4\./)
    assert.match(result.pluginVersion, /^4\./)
    assert.equal(result.successful, 1, JSON.stringify(result.events))
    assert.equal(result.failed, 0)
    assert.ok(result.events.successBodies[0].ETag, 'Uppy 4 passes the ETag on')
    assert.deepEqual(result.events.confirmed, [result.s3object])
    await assertStoredAndConfirmedOnce(result.s3object, size, 4)
  })

  test("a second user cannot confirm the first one's upload (404)", async () => {
    const owner = upload({ name: 'owned.bin', size: 1000, seed: 9 })
    const uploaded = await page.evaluate((args) => window.kzFetch.presignAndPost(args), owner)
    const otherToken = await gw.tokenFor('someone-else')
    assert.notEqual(otherToken, gw.token)
    const stolen = await page.evaluate((args) => window.kzFetch.confirmOnce(args), { gatewayUrl: gw.gatewayUrl, token: otherToken, upload: uploaded })
    assert.equal(stolen.ok, false)
    assert.equal(stolen.error.status, 404)
    assert.equal(stolen.error.code, 'upload_not_found')
    assert.equal((await gw.confirmationsOf(uploaded.uuid)).length, 0, 'a refused confirmation reached Kizen')
    // The owner still can, once.
    const owned = await page.evaluate((args) => window.kzFetch.confirmOnce(args), { gatewayUrl: gw.gatewayUrl, token: gw.token, upload: uploaded })
    assert.ok(owned.ok, JSON.stringify(owned.error))
    assert.equal((await gw.confirmationsOf(uploaded.uuid)).length, 1)
  })

  test('a confirmation that Kizen answers 5xx is retried and succeeds once', async () => {
    await gw.script('success', 503, '{"detail": "try later"}', [['content-type', 'application/json']])
    const size = 4096
    const result = await page.evaluate(
      (args) => window.kzFetch.upload(args),
      upload({ name: 'retried.bin', size, seed: 5, confirmRetry: { baseDelayMs: 50 } }),
    )
    assert.ok(result.ok, JSON.stringify(result.error))
    assert.equal(result.retries.length, 1, JSON.stringify(result.retries))
    assert.equal(result.retries[0].status, 502)
    assert.equal(result.retries[0].code, 'upstream_error')
    const confirmations = await gw.confirmationsOf(result.s3object.id)
    assert.equal(confirmations.length, 2, 'the failed attempt and the retry')
    const stored = await gw.object(result.s3object.key)
    assert.ok(stored.bytes.equals(expectedBytes(size, 5)))
    // Repeating it now is answered from the gateway's record: Kizen is not called again.
    const repeat = await page.evaluate((args) => window.kzFetch.confirmOnce(args), {
      gatewayUrl: gw.gatewayUrl,
      token: gw.token,
      upload: { uuid: result.s3object.id, key: result.s3object.key, name: 'retried.bin', etag: stored.etag },
    })
    assert.ok(repeat.ok, JSON.stringify(repeat.error))
    assert.equal((await gw.confirmationsOf(result.s3object.id)).length, 2)
  })

  test('an oversize file is refused by the storage policy (EntityTooLarge), nothing confirmed', async () => {
    const before = (await gw.requests()).filter((r) => r.path === '/api/s3/success').length
    const result = await page.evaluate((args) => window.kzFetch.upload(args), upload({ name: 'huge.bin', size: MAX_FILE_SIZE + 1, seed: 7 }))
    assert.equal(result.ok, false)
    assert.equal(result.error.step, 'upload')
    assert.equal(result.error.status, 400)
    assert.equal(result.error.code, 'EntityTooLarge')
    const after = (await gw.requests()).filter((r) => r.path === '/api/s3/success').length
    assert.equal(after, before)
  })

  test('aborting stops the upload: nothing is confirmed', async () => {
    const before = (await gw.requests()).filter((r) => r.path === '/api/s3/success').length
    const result = await page.evaluate(
      (args) => window.kzFetch.upload(args),
      upload({ name: 'aborted.bin', size: 4 * 1024 * 1024, seed: 8, abortOnProgress: true }),
    )
    assert.equal(result.ok, false)
    assert.equal(result.error.name, 'AbortError')
    const after = (await gw.requests()).filter((r) => r.path === '/api/s3/success').length
    assert.equal(after, before)
  })

  test('a 401 is readable by the page (CORS on errors), with its problem code', async () => {
    const result = await page.evaluate((args) => window.kzFetch.upload(args), upload({ token: 'not-a-jwt', name: 'x.bin', size: 10, seed: 0 }))
    assert.equal(result.ok, false)
    assert.equal(result.error.step, 'presign')
    assert.equal(result.error.status, 401)
    assert.equal(result.error.code, 'token_malformed')
  })

  // Last: it reads every request the page made in the tests above.
  test('no request from the page carries the API key', async () => {
    const presigns = (await gw.requests()).filter((r) => r.path === '/api/s3/presigned-post')
    const apiKey = presigns[0]?.headers.find(([name]) => name === 'x-api-key')?.[1]
    assert.ok(apiKey && apiKey.length >= 16, 'the gateway sent Kizen no API key to look for')
    const toGateway = pageRequests.filter((r) => r.url().startsWith(gw.gatewayUrl))
    const toStorage = pageRequests.filter((r) => r.url().startsWith(`${gw.standinUrl}/upload`))
    assert.ok(toGateway.length >= 10 && toStorage.length >= 5, `too few requests seen: ${toGateway.length} gateway, ${toStorage.length} storage`)
    for (const request of pageRequests) {
      const headers = JSON.stringify(await request.allHeaders())
      assert.ok(!headers.toLowerCase().includes(apiKey.toLowerCase()), `API key in the headers of ${request.url()}`)
      assert.ok(!/x-api-key/i.test(headers), `an X-API-KEY header on ${request.url()}`)
      const body = request.postDataBuffer()
      assert.ok(!body || !body.includes(apiKey), `API key in the body of ${request.url()}`)
      assert.ok(!request.url().includes(apiKey), `API key in the URL ${request.url()}`)
    }
  })
})
