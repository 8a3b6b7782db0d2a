"""Speech front end of loc3r (ROS-free): spoken situation + question in, spoken answer out.

Pipeline::

    raw audio bytes --audio.decode_audio--> AudioClip (mono float, 16 kHz, validated)
      --vad.StreamingVad / find_speech--> utterances (energy VAD, adaptive noise floor)
      --asr.SpeechRecognizer.transcribe--> Transcript (PocketSphinx + domain LM, or Whisper)
      --split.split_utterance--> (situation, question)
      --> /loc3r/ask (the ROS node; not here) --> answer text
      --tts.SpeechSynthesizer.synthesize--> AudioClip (espeak-ng or Piper)

`corpus` generates the domain sentences from the scene catalogue, `lm` turns them into the
recogniser's n-gram model and dictionary, `wer` scores transcripts. Errors are
`errors.SpeechInputError` (bad audio or transcript: tell the user) and
`errors.SpeechBackendError` (missing program, package or model: tell the operator).
"""

from loc3r.speech.errors import SpeechBackendError, SpeechInputError

__all__ = ["SpeechBackendError", "SpeechInputError"]
