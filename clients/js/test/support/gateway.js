// The real kizen-gateway binary in dev mode, on free ports, in front of its built-in stand-in of
// Kizen and S3 storage; plus the stand-in's dev-only inspection routes (/_dev/...).
import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { join } from 'node:path'

const repoRoot = fileURLToPath(new URL('../../../../', import.meta.url))

/** KIZEN_GATEWAY_BIN, or a fresh `cargo build` of this repository's gateway. */
export function gatewayBinary() {
  if (process.env.KIZEN_GATEWAY_BIN) return process.env.KIZEN_GATEWAY_BIN
  const build = spawnSync('cargo', ['build', '--locked', '--bin', 'kizen-gateway'], { cwd: repoRoot, stdio: ['ignore', 'inherit', 'inherit'] })
  if (build.status !== 0) throw new Error(`cargo build failed (status ${build.status})`)
  const bin = join(repoRoot, 'target', 'debug', 'kizen-gateway')
  if (!existsSync(bin)) throw new Error(`no binary at ${bin}`)
  return bin
}

/**
 * Starts `kizen-gateway dev` allowing `origin`; resolves once it printed its steps, to
 * { gatewayUrl, standinUrl, token, tokenFor, standin helpers, stop }.
 */
export async function startDevGateway(bin, { origin, timeoutMs = 60_000 }) {
  const child = spawn(bin, ['dev', '--listen', '127.0.0.1:0', '--standin-listen', '127.0.0.1:0', '--allow-origin', origin], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-20_000)
  })
  const printed = await new Promise((resolve, reject) => {
    let stdout = ''
    const timer = setTimeout(() => fail(new Error(`dev mode did not print its steps within ${timeoutMs} ms`)), timeoutMs)
    function fail(error) {
      clearTimeout(timer)
      child.kill('SIGTERM')
      reject(new Error(`${error.message}\nstdout:\n${stdout}\nstderr:\n${stderr}`))
    }
    child.on('exit', (code) => fail(new Error(`dev mode exited with ${code}`)))
    child.stdout.on('data', (chunk) => {
      stdout += chunk
      if (stdout.includes('# ---- end of steps ----')) {
        clearTimeout(timer)
        child.removeAllListeners('exit')
        resolve(stdout)
      }
    })
  })
  const pick = (re) => {
    const match = re.exec(printed)
    if (!match) throw new Error(`not in dev mode's output: ${re}\n${printed}`)
    return match[1]
  }
  const gatewayUrl = pick(/^ gateway:\s+(\S+)/m)
  const standinUrl = pick(/^ stand-in:\s+(\S+)/m)
  const token = pick(/^export TOKEN='([^']+)'/m)
  const exited = new Promise((resolve) => child.on('exit', resolve))

  async function standinJson(path, init) {
    const response = await fetch(`${standinUrl}${path}`, init)
    if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`)
    return response.status === 204 ? undefined : response.json()
  }

  return {
    gatewayUrl,
    standinUrl,
    token,
    stderr: () => stderr,
    /** A dev token for another user (`GET /_dev/token?sub=`). */
    async tokenFor(sub) {
      const response = await fetch(`${standinUrl}/_dev/token?sub=${encodeURIComponent(sub)}`)
      if (!response.ok) throw new Error(`token for ${sub}: ${response.status}`)
      return response.text()
    },
    /** Every request the stand-in received. */
    requests: () => standinJson('/_dev/requests'),
    /** The confirmations the stand-in received for upload `uuid`. */
    async confirmationsOf(uuid) {
      const all = await standinJson('/_dev/requests')
      return all.filter((r) => r.path === '/api/s3/success' && new URLSearchParams(r.body ?? '').get('uuid') === uuid)
    },
    /** The stored object under `key`: { status, bytes, etag, contentType }. */
    async object(key) {
      const response = await fetch(`${standinUrl}/_dev/objects?key=${encodeURIComponent(key)}`)
      return {
        status: response.status,
        bytes: Buffer.from(await response.arrayBuffer()),
        etag: response.headers.get('etag'),
        contentType: response.headers.get('content-type'),
      }
    },
    /** The next call to `endpoint` ('presign' | 'success') is answered so. */
    script: (endpoint, status, body = '', headers = []) =>
      standinJson('/_dev/script', { method: 'POST', body: JSON.stringify({ endpoint, status, headers, body }) }),
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM')
      await exited
    },
  }
}
