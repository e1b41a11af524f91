// The confirmation retry policy, without a browser: a fake fetch answers what each case needs.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { KizenUploadError, backoffDelay, createClient, parseRetryAfter, parseS3Error } from '../src/index.js'

const problem = (status, code, headers = {}) =>
  new Response(JSON.stringify({ type: `urn:kizen-gateway:problem:${code}`, status, code, detail: code }), {
    status,
    headers: { 'content-type': 'application/problem+json', ...headers },
  })
const ok = () => new Response(JSON.stringify({ id: 'u1', key: 'k' }), { status: 200, headers: { 'content-type': 'application/json' } })

/** A client whose fetch answers from `answers` in order, counting the calls. */
function scripted(answers) {
  const calls = []
  const client = createClient({
    gatewayUrl: 'http://gw.invalid',
    token: 't',
    confirmRetry: { baseDelayMs: 1, maxDelayMs: 5 },
    fetch: async (url, init) => {
      calls.push({ url, init })
      const next = answers.shift()
      if (next instanceof Error) throw next
      return next()
    },
  })
  return { client, calls }
}
const input = { uuid: 'u1', key: 'k', name: 'n', etag: '"e"' }

for (const [status, code] of [
  [502, 'upstream_error'],
  [503, 'store_unavailable'],
  [409, 'confirmation_in_progress'],
]) {
  test(`a confirmation answered ${status} ${code} is retried`, async () => {
    const { client, calls } = scripted([() => problem(status, code), ok])
    assert.deepEqual(await client.confirm(input), { id: 'u1', key: 'k' })
    assert.equal(calls.length, 2)
  })
}

test('a network error is retried', async () => {
  const { client, calls } = scripted([new TypeError('Failed to fetch'), ok])
  await client.confirm(input)
  assert.equal(calls.length, 2)
})

for (const [status, code] of [
  [400, 'invalid_input'],
  [401, 'token_expired'],
  [403, 'key_mismatch'],
  [404, 'upload_not_found'],
  [409, 'already_confirmed'],
  [410, 'upload_expired'],
  [429, 'too_many_outstanding_uploads'],
]) {
  test(`a confirmation answered ${status} ${code} is final`, async () => {
    const { client, calls } = scripted([() => problem(status, code), ok])
    await assert.rejects(client.confirm(input), (error) => {
      assert.ok(error instanceof KizenUploadError)
      assert.equal(error.status, status)
      assert.equal(error.code, code)
      assert.equal(error.step, 'confirm')
      return true
    })
    assert.equal(calls.length, 1)
  })
}

test('a 429 with Retry-After waits that long, then retries', async () => {
  const { client, calls } = scripted([() => problem(429, 'rate_limited', { 'retry-after': '1' }), ok])
  const notices = []
  const started = Date.now()
  await client.confirm(input, { onRetry: (n) => notices.push(n) })
  assert.equal(calls.length, 2)
  assert.equal(notices[0].delayMs >= 1000, true)
  assert.ok(Date.now() - started >= 990)
})

test('a 429 whose Retry-After is beyond maxRetryAfterMs is final', async () => {
  const { client, calls } = scripted([() => problem(429, 'daily_upload_quota_exceeded', { 'retry-after': '3600' }), ok])
  await assert.rejects(client.confirm(input), { code: 'daily_upload_quota_exceeded', retryAfterMs: 3_600_000 })
  assert.equal(calls.length, 1)
})

test('retries stop after the policy`s count', async () => {
  const answers = Array.from({ length: 10 }, () => () => problem(502, 'upstream_error'))
  const { client, calls } = scripted(answers)
  await assert.rejects(client.confirm(input), { code: 'upstream_error' })
  assert.equal(calls.length, 1 + client.retryPolicy.retries)
})

test('an abort during the backoff stops the retries', async () => {
  const { client, calls } = scripted([() => problem(502, 'upstream_error'), ok])
  const controller = new AbortController()
  const confirming = client.confirm(input, { signal: controller.signal, onRetry: () => controller.abort() })
  await assert.rejects(confirming, { name: 'AbortError' })
  assert.equal(calls.length, 1)
})

test('the confirmation is a form post with the bearer token', async () => {
  const { client, calls } = scripted([ok])
  await client.confirm({ ...input, isPublic: true })
  const { url, init } = calls[0]
  assert.equal(url, 'http://gw.invalid/api/s3/success')
  assert.equal(init.method, 'POST')
  assert.equal(init.headers.Authorization, 'Bearer t')
  assert.equal(init.headers['Content-Type'], 'application/x-www-form-urlencoded')
  assert.equal(init.body, 'uuid=u1&key=k&name=n&etag=%22e%22&is_public=true')
})

test('backoff is jittered under an exponential ceiling, and never below Retry-After', () => {
  const policy = { retries: 5, baseDelayMs: 100, maxDelayMs: 1000, maxRetryAfterMs: 30000 }
  assert.equal(backoffDelay(0, policy, undefined, () => 1), 100)
  assert.equal(backoffDelay(3, policy, undefined, () => 1), 800)
  assert.equal(backoffDelay(6, policy, undefined, () => 1), 1000)
  assert.equal(backoffDelay(3, policy, undefined, () => 0), 0)
  assert.equal(backoffDelay(0, policy, 2000, () => 1), 2000)
})

test('Retry-After: seconds and HTTP dates', () => {
  assert.equal(parseRetryAfter('3'), 3000)
  assert.equal(parseRetryAfter(null), undefined)
  assert.equal(parseRetryAfter('Thu, 01 Jan 2099 00:00:10 GMT', Date.parse('Thu, 01 Jan 2099 00:00:00 GMT')), 10000)
})

test('S3 XML errors are read', () => {
  assert.deepEqual(parseS3Error('<?xml version="1.0"?><Error><Code>EntityTooLarge</Code><Message>too &amp; big</Message></Error>'), {
    code: 'EntityTooLarge',
    message: 'too & big',
  })
})
