/** What the benchmark sends and serves, without side effects (the tests import it; lib.ts kills servers on exit). */

/** mobilenetv2-12-int8's model.json in the benchmark's repositories, with the batching given. */
export const mobilenetConfig = (batching: object) => ({
  task: 'classification',
  preprocessing: {
    resizeType: 'CROP',
    interpolation: 'LINEAR', // as models/mobilenet/model.json (bilinear, as torchvision trains it)
    cropFraction: 0.875,
    colorChannels: 'RGB',
    pixelScaling: 1,
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
  },
  postprocessing: { activation: 'softmax' },
  batching,
});

/**
 * The protocol alone: a photo uploaded as a GraphQL multipart request and answered without inference. The file is
 * declared and used (a map that binds a file to an undeclared variable is refused) by a classify field that is skipped.
 */
export const PROTOCOL_ALONE_QUERY =
  'mutation($f: File!) { __typename classify(model: "mobilenet", image: { file: $f }) @skip(if: true) { predictions { classId } } }';
