import { builder } from './builder.ts';

// The root types, declared once; each domain file adds its fields with queryFields / mutationFields /
// subscriptionFields, so no schema file depends on the order the others are imported in.
builder.queryType({ description: 'Read models and their shapes.' });
builder.mutationType({ description: 'Act: run inference, load, unload and update models.' });
builder.subscriptionType({ description: 'Follow model status.' });
