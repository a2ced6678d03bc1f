import SchemaBuilder from '@pothos/core';
import type { ModelRepository } from '../repository/repository.ts';
import type { InferenceLimits } from '../inference.ts';

/** What every resolver gets. Built per request by server.ts. */
export interface Context {
  repository: ModelRepository;
  limits: InferenceLimits & { imageRoots: readonly string[]; maxImagesPerRequest: number; maxImageBytes: number };
  /** Ends open subscriptions when the server shuts down. */
  shutdown: AbortSignal;
  /** Counts images of this request (maxImagesPerRequest). */
  imageCount: { n: number };
  /** Is the caller allowed to run admin mutations? Throws the typed error when not. */
  requireAdmin: () => void;
}

export type Scalars = {
  JSON: { Input: unknown; Output: unknown };
  File: { Input: File; Output: never };
  DateTime: { Input: Date; Output: Date };
};

/** The builder only: no types here (they live one file per domain). */
export const builder = new SchemaBuilder<{ Context: Context; Scalars: Scalars; DefaultFieldNullability: false }>({
  defaultFieldNullability: false,
});
