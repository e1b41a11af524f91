// Type declarations of @kizen-gateway/client (hand-written; checked with `npm run typecheck`).

/** Where an upload failed. */
export type UploadStep = 'auth' | 'presign' | 'upload' | 'confirm'

/** Retry policy of confirmations (jittered exponential backoff). */
export interface ConfirmRetryPolicy {
  /** Attempts after the first. Default 5. */
  retries: number
  /** First backoff ceiling in ms, doubled per attempt. Default 250. */
  baseDelayMs: number
  /** Largest backoff ceiling in ms. Default 8000. */
  maxDelayMs: number
  /** A 429 whose Retry-After is longer than this is final. Default 30000. */
  maxRetryAfterMs: number
}

export declare const DEFAULT_CONFIRM_RETRY: Readonly<ConfirmRetryPolicy>

/** The gateway's RFC 9457 problem body. */
export interface GatewayProblem {
  type?: string
  title?: string
  status?: number
  code: string
  detail?: string
  errors?: Array<{ field: string; code: string; detail?: string }>
  [extra: string]: unknown
}

/** Every failure of this client. */
export declare class KizenUploadError extends Error {
  name: 'KizenUploadError'
  /** Where it failed. */
  step: UploadStep
  /** HTTP status; 0 for a network error. */
  status: number
  /**
   * The gateway problem's `code` (e.g. `upload_not_found`), S3's error `Code` (e.g.
   * `EntityTooLarge`), `http_<status>` when there is none, or `network_error`,
   * `etag_unreadable`, `bad_response`, `token_missing`.
   */
  code: string
  /** The problem body (gateway) or the raw XML (S3), when there was one. */
  problem?: GatewayProblem | string
  /** `Retry-After` of the answer, in ms. */
  retryAfterMs?: number
  constructor(
    message: string,
    init?: { step?: UploadStep; status?: number; code?: string; problem?: GatewayProblem | string; retryAfterMs?: number; cause?: unknown },
  )
}

/** Kizen's presigned POST, as the gateway passes it on. */
export interface PresignedPost {
  url: string
  fields: Record<string, string> & { key: string }
  s3object_id: string
  max_file_size: number
  expires_at: string
}

/** Kizen's stored S3Object, the answer of a confirmation. */
export interface S3Object {
  id: string
  key: string
  name: string | null
  url: string
  size_bytes?: number
  content_type?: string | null
  is_public?: boolean
  [field: string]: unknown
}

export interface UploadProgress {
  step: 'presign' | 'upload' | 'confirm'
  /** Bytes of the file sent so far. */
  loaded: number
  /** The file's size. */
  total: number
}

export interface RetryNotice {
  /** 1 for the first retry. */
  attempt: number
  delayMs: number
  error: KizenUploadError
}

export interface ClientOptions {
  /** The gateway's base URL, e.g. `https://uploads.example.com`; '' for the page's own origin. */
  gatewayUrl?: string
  /** A fixed bearer token (JWT). */
  token?: string
  /** Called before every gateway request: return a fresh token. */
  getToken?: () => string | Promise<string>
  /** A fetch implementation; default `globalThis.fetch`. */
  fetch?: typeof fetch
  /** Overrides of `DEFAULT_CONFIRM_RETRY`. */
  confirmRetry?: Partial<ConfirmRetryPolicy>
}

export interface UploadOptions {
  /** Kizen's `source`, e.g. `field_value`. */
  source: string
  /** Default: `file.name`. */
  filename?: string
  /** Default: `file.type`, else `application/octet-stream`. */
  contentType?: string
  signal?: AbortSignal
  onProgress?: (progress: UploadProgress) => void
  isPublic?: boolean
  onRetry?: (notice: RetryNotice) => void
}

export interface ConfirmInput {
  uuid: string
  key: string
  name: string
  etag: string
  isPublic?: boolean
}

export interface S3PostResult {
  /** The ETag as S3 sent it (quotes included). */
  etag: string
  location?: string
}

export interface KizenClient {
  presign(input: { filename: string; contentType: string; source: string; signal?: AbortSignal }): Promise<PresignedPost>
  postToS3: typeof postToS3
  /** Confirms with retries (network errors, 5xx, 409 in progress, 429 with Retry-After). */
  confirm(input: ConfirmInput, options?: { signal?: AbortSignal; onRetry?: (notice: RetryNotice) => void }): Promise<S3Object>
  /** One confirmation attempt, no retry. */
  confirmOnce(input: ConfirmInput, options?: { signal?: AbortSignal }): Promise<S3Object>
  uploadFile(file: Blob & { name?: string }, options: UploadOptions): Promise<S3Object>
  readonly retryPolicy: ConfirmRetryPolicy
}

export declare function createClient(options: ClientOptions): KizenClient

/** Presign, POST to S3, confirm; resolves to Kizen's S3Object. */
export declare function uploadFile(file: Blob & { name?: string }, options: UploadOptions & ClientOptions): Promise<S3Object>

/** The multipart POST to S3: every presigned field first, the file last. */
export declare function postToS3(
  presigned: Pick<PresignedPost, 'url' | 'fields'>,
  file: Blob,
  options?: { signal?: AbortSignal; onProgress?: (progress: UploadProgress) => void },
): Promise<S3PostResult>

export declare function parseRetryAfter(value: string | null | undefined, now?: number): number | undefined
export declare function isRetryableConfirmError(error: unknown, policy?: ConfirmRetryPolicy): boolean
export declare function backoffDelay(attempt: number, policy?: ConfirmRetryPolicy, retryAfterMs?: number, random?: () => number): number
export declare function parseS3Error(xml: string | null | undefined): { code?: string; message?: string }

export interface EtagRecorder {
  expect(key: string): void
  /** The ETag of the last watched POST of `key`, once it ended; undefined when none was read. */
  etagFor(key: string): Promise<string | undefined>
  forget(key: string): void
  close(): void
}
export declare function createEtagRecorder(): EtagRecorder

/** The least of an Uppy instance the adapters use (Uppy 4 and Uppy 6 both fit). */
export interface UppyLike {
  getFile(id: string): any
  setFileState(id: string, state: object): void
  emit(event: string, ...args: any[]): void
  on(event: 'upload-success', handler: (file: any, response: any) => void): unknown
  off(event: 'upload-success', handler: (file: any, response: any) => void): unknown
  addPostProcessor(fn: (fileIDs: string[]) => Promise<unknown>): void
  removePostProcessor(fn: (fileIDs: string[]) => Promise<unknown>): boolean | void
}

export interface UppyAdapterOptions extends ClientOptions {
  /** Kizen's `source` for every file (a file's `meta.kizenSource` overrides it). */
  source: string
  isPublic?: boolean
  onRetry?: (notice: RetryNotice) => void
  /** Use this client instead of making one from the ClientOptions. */
  client?: KizenClient
}

export interface UppyAdapter<Options> {
  /** Pass to `uppy.use(AwsS3, adapter.options)`. */
  options: Options
  client: KizenClient
  /** Stops confirming for this Uppy. */
  dispose(): void
}

/** Options for `@uppy/aws-s3` 6. */
export interface Uppy6AwsS3Options {
  shouldUseMultipart: false
  generateObjectKey: (file: { id: string }) => string
  signRequest: (request: { method: string; key: string; contentType?: string; uploadId?: string }) => Promise<{ url: string; fields: Record<string, string> }>
}

/** Options for `@uppy/aws-s3` 4. */
export interface Uppy4AwsS3Options {
  shouldUseMultipart: false
  getUploadParameters: (
    file: any,
    options?: { signal?: AbortSignal },
  ) => Promise<{ method: 'POST'; url: string; fields: Record<string, string>; headers: Record<string, string> }>
}

export declare function createUppy6Adapter(uppy: UppyLike, options: UppyAdapterOptions): UppyAdapter<Uppy6AwsS3Options>
export declare function createUppy4Adapter(uppy: UppyLike, options: UppyAdapterOptions): UppyAdapter<Uppy4AwsS3Options>
