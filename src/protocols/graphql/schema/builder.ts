import SchemaBuilder from '@pothos/core';
import type { Context } from '../context.ts';

export type Scalars = {
  JSON: { Input: unknown; Output: unknown };
  File: { Input: File; Output: never };
  DateTime: { Input: Date; Output: Date | string };
};

/** The builder only: no types here (they live one file per domain; the root types in root.ts). */
export const builder = new SchemaBuilder<{ Context: Context; Scalars: Scalars; DefaultFieldNullability: false }>({
  defaultFieldNullability: false,
});
