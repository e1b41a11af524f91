// The test page: bundled with esbuild (Uppy 4 and Uppy 6 side by side through npm aliases) and
// served on a free loopback port, so that the page's origin differs from the gateway's and the
// storage's (every call is cross-origin, as in production).
import { createServer } from 'node:http'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const pageDir = fileURLToPath(new URL('../page/', import.meta.url))

export async function buildBundles() {
  const outdir = await mkdtemp(join(tmpdir(), 'kizen-client-page-'))
  const common = { bundle: true, format: 'esm', platform: 'browser', target: 'es2022', logLevel: 'warning', absWorkingDir: fileURLToPath(new URL('../..', import.meta.url)) }
  await esbuild.build({ ...common, entryPoints: [join(pageDir, 'fetch.js')], outfile: join(outdir, 'fetch.js') })
  for (const major of [4, 6]) {
    await esbuild.build({
      ...common,
      entryPoints: [join(pageDir, 'uppy.js')],
      outfile: join(outdir, `uppy${major}.js`),
      define: { UPPY_MAJOR: String(major) },
      // Resolved from the package's folder: the aliased installs of each Uppy major.
      alias: { '@uppy/core': `uppy${major}-core`, '@uppy/aws-s3': `uppy${major}-aws-s3` },
    })
  }
  return outdir
}

/** Serves index.html and the bundles; resolves to { origin, close }. */
export async function servePage(outdir) {
  const files = {
    '/': [join(pageDir, 'index.html'), 'text/html; charset=utf-8'],
    '/fetch.js': [join(outdir, 'fetch.js'), 'text/javascript'],
    '/uppy4.js': [join(outdir, 'uppy4.js'), 'text/javascript'],
    '/uppy6.js': [join(outdir, 'uppy6.js'), 'text/javascript'],
  }
  const server = createServer(async (req, res) => {
    const entry = files[new URL(req.url, 'http://x').pathname]
    if (!entry) {
      res.writeHead(404).end()
      return
    }
    res.writeHead(200, { 'content-type': entry[1], 'cache-control': 'no-store' })
    res.end(await readFile(entry[0]))
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  return {
    origin: `http://127.0.0.1:${port}`,
    close: async () => {
      await new Promise((resolve) => server.close(resolve))
      await rm(outdir, { recursive: true, force: true })
    },
  }
}
