import { builder } from './builder.ts';
import './root.ts';
import './scalars.ts';
import './models.ts';
import './results.ts';
import './inference.ts';

export const schema = builder.toSchema({ sortSchema: false });
