/**
 * Every error this library throws on purpose is a `TarflowError` with a stable `code`, so that programs can
 * branch on `err.code` and people read a message that names the problem and the fix.
 */
export type TarflowErrorCode =
  | 'ERR_TARFLOW_INVALID_ARGUMENT'
  | 'ERR_TARFLOW_SHAPE'
  | 'ERR_TARFLOW_DTYPE'
  | 'ERR_TARFLOW_FILE_FORMAT'
  | 'ERR_TARFLOW_CONFIG'
  | 'ERR_TARFLOW_CHECKPOINT'
  | 'ERR_TARFLOW_DATA'
  | 'ERR_TARFLOW_DEVICE'
  | 'ERR_TARFLOW_OUT_OF_MEMORY'
  | 'ERR_TARFLOW_NON_FINITE'
  | 'ERR_TARFLOW_DISPOSED'
  | 'ERR_TARFLOW_ABORTED'
  | 'ERR_TARFLOW_NATIVE';

export class TarflowError extends Error {
  readonly code: TarflowErrorCode;
  constructor(code: TarflowErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TarflowError';
    this.code = code;
  }
}

/** Throws a TarflowError with `code` unless `condition` holds. */
export function check(condition: unknown, code: TarflowErrorCode, message: string | (() => string)): asserts condition {
  if (!condition) throw new TarflowError(code, typeof message === 'function' ? message() : message);
}
