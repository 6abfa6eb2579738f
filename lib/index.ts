/**
 * tarflow: TarFlow normalizing flows (Zhai et al., 2024) on native kernels.
 *
 * High level (async, on a worker thread): train, sample, evaluate, score, generateToDisk, evalSamples.
 * Low level (synchronous, on the calling thread): TarFlow, Trainer, generate, denoise, scoreImages, evaluateBpd.
 */
export { TarflowError, type TarflowErrorCode } from './errors.js';
export { getBackend, type Backend, type Tensor, type DeviceOption, type DType, type FloatDType, type Ops, type Precision } from './backend.js';
export { PRESETS, validateConfig, modelShape, toReferenceConfig, fromReferenceConfig, type TarFlowConfig, type ReferenceConfig, type PresetName } from './config.js';
export { TarFlow, Workspace, type ModelOptions, type TrainingNoise, type ReverseOptions, type ForwardResult } from './model.js';
export type { GuidanceOptions } from './guidance.js';
export { ParamSet, parameterLayout } from './params.js';
export { Trainer, learningRate, resolveTrainOptions, type TrainOptions, type StepResult } from './train.js';
export { generate, denoise, resolveLabels, defaultTemperature, LIKELIHOOD_TEMPERATURE, type GenerateOptions, type GenerateResult, type DenoiseOptions } from './sampling.js';
export { scoreImages, evaluateBpd, type ScoreOptions, type EvaluateResult } from './evaluate.js';
export { saveModel, loadModel, stateDict, loadStateDict, configFromMetadata, type SaveOptions, type LoadOptions } from './checkpoint.js';
export { loadMnist, loadNpyDataset, loadNpzDataset, loadCifarDataset, loadIdxDataset, loadImageFolderDataset, loadDataset, makeDataset, type ImageDataset, type DatasetLoadOptions } from './data.js';
export { CIFAR10_CLASSES } from './cifar.js';
export { PRETRAINED, pretrainedPath, type PretrainedModel } from './pretrained.js';
export { train, sample, evaluate, score, generateToDisk, evalSamples, type JobOptions } from './jobs.js';
export type { GenerateSpec, GenerateSummary, Manifest } from './batch-generate.js';
export {
  knnClassify, evaluateSamples, checkMnistConditional,
  type KnnReference, type KnnOptions, type KnnResult, type EvaluateSamplesOptions, type SampleQuality, type DistanceStats, type EvalSamplesSpec,
} from './sample-quality.js';
export { readNpz, writeNpz, parseNpz, serializeNpz } from './npz.js';
export type { Progress, SampleSpec, SampleSummary, EvaluateSpec, ScoreSpec, ScoreSummary } from './tasks.js';
export type { TrainSpec, TrainSummary } from './train-task.js';
export { readSafetensors, writeSafetensors, parseSafetensors, serializeSafetensors } from './safetensors.js';
export { readNpy, writeNpy, parseNpy } from './npy.js';
export { encodePng, writePng, imageGrid } from './png.js';
