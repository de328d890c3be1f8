/** YAML parsing whose errors are safe to print. */
import yaml from 'js-yaml';

/** A YAML syntax error reduced to its reason and position. */
export class YamlSyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'YamlSyntaxError';
  }
}

/**
 * yaml.load, but a syntax error keeps only the first line of js-yaml's message (reason and position): the rest is
 * a snippet of the surrounding lines, which in a config file or clouds.yaml may hold a password. The original
 * error is not kept as a cause, so its stack (which repeats the snippet) cannot reach a log either.
 */
export function loadYaml(text: string, filename: string): unknown {
  try {
    return yaml.load(text, { filename });
  } catch (err) {
    throw new YamlSyntaxError(String((err as Error).message).split('\n')[0]);
  }
}
