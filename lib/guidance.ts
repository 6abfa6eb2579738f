/**
 * Classifier-free guidance's options (spec: guidance): the weight w, which coupling parameters it mixes, the
 * unconditional pass's attention temperature and the annealed schedule. The mix itself runs inside the sampler's
 * token loop, natively (native/cpu/reverse.cc, native/cuda/reverse.cu's update_kernel); model.ts's reverse passes
 * these options on.
 */
import { checkBoolean, checkNumber, checkObject, checkOneOf, describeValue, validationError, type OptionNames } from './validate.js';

export interface GuidanceOptions {
  /** Guidance weight w (0 = none). */
  guidance?: number;
  /** Which coupling parameters to guide: 'ab' (default), 'a' or 'b'. */
  guideWhat?: 'ab' | 'a' | 'b';
  /** Attention temperature tau_u of the unconditional pass. */
  attnTemp?: number;
  /** g_i = w (i+1)/(T-1) instead of a constant w. */
  annealed?: boolean;
}

export const GUIDANCE_OPTIONS = { guidance: true, guideWhat: true, attnTemp: true, annealed: true } as const satisfies OptionNames<GuidanceOptions>;

/**
 * Checks guidance options and fills their defaults (no guidance, both parameters guided, temperature 1). The other
 * three shape the guided term only, so one set away from its default without guidance is refused: it would change
 * nothing, and a user who set it believes it did.
 */
export function resolveGuidance(o: GuidanceOptions): Required<GuidanceOptions> {
  checkObject('options', o);
  const r = {
    guidance: checkNumber('guidance', o.guidance ?? 0, { min: 0 }),
    guideWhat: checkOneOf('guideWhat', o.guideWhat ?? 'ab', ['ab', 'a', 'b']),
    attnTemp: checkNumber('attnTemp', o.attnTemp ?? 1, { above: 0 }),
    annealed: checkBoolean('annealed', o.annealed ?? false),
  };
  if (r.guidance === 0) {
    const idle = r.guideWhat !== 'ab' ? ['guideWhat', r.guideWhat] : r.attnTemp !== 1 ? ['attnTemp', r.attnTemp] : r.annealed ? ['annealed', true] : null;
    if (idle) {
      throw validationError('ERR_TARFLOW_INVALID_ARGUMENT', idle[0] as string, 'guidance above 0 for it to act', `${describeValue(idle[1])} with guidance 0`,
        'give a guidance weight, or leave it out');
    }
  }
  return r;
}
