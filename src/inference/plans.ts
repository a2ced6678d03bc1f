import { ErrorCode, GatewayError } from '../errors.ts';
import type { Session } from '../engine/types.ts';
import type { Model, ModelFiles } from '../repository/model.ts';
import type { ModelVersion } from '../repository/version.ts';
import { pixelInputSpec, planInput, type InputPlan } from '../vision/preprocess.ts';

/** The preprocessing plan of each loaded session: made once at load (prepareImageInput), read by every request. */
const plans = new WeakMap<Session, InputPlan>();

/**
 * At load: plan an image model's input from the configuration it is loaded with, and where the engine can take over
 * the per-pixel work (channel order, float conversion, mean and std, layout), hand it over, so that requests send
 * the decoded pixels as they are.
 */
export async function prepareImageInput(files: ModelFiles, session: Session, { fuse = true }: { fuse?: boolean } = {}): Promise<InputPlan> {
  let plan = planInput(files.config, session.inputs, files.mean);
  const spec = fuse && session.fusePixels ? pixelInputSpec(plan) : null;
  if (spec) plan = { ...plan, pixelInput: await session.fusePixels!(spec) };
  plans.set(session, plan);
  return plan;
}

/** The plan of a version's session (and the configuration it was loaded with). */
export function planFor(model: Model, version: ModelVersion): { plan: InputPlan; files: ModelFiles } {
  const session = version.session;
  const files = version.files;
  if (!session || !files)
    throw new GatewayError(ErrorCode.MODEL_NOT_READY, `model ${model.name} version ${version.version} is ${version.state}`);
  let plan = plans.get(session);
  if (!plan) plans.set(session, (plan = planInput(files.config, session.inputs, files.mean)));
  return { plan, files };
}
