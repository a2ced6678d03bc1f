import { builder } from './builder.ts';
import './scalars.ts';
import './models.ts';
import './inference.ts';

export { builder };
export type { Context } from './builder.ts';
export const schema = builder.toSchema({ sortSchema: false });
