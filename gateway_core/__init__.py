"""Lockgate: an LLM API gateway. This module is the public API for plugin authors."""

from gateway_core.balancing import Balancer
from gateway_core.commands import Command
from gateway_core.config import DeploymentConfig, GatewayConfig, load_config, parse_config
from gateway_core.dlp.filter import DlpFilter, Finding
from gateway_core.errors import ConfigError, GatewayError, bad_request
from gateway_core.gateway import Gateway
from gateway_core.hookspecs import hookimpl
from gateway_core.http import HttpClient, client_timeout, forwarded_headers, post, read_json
from gateway_core.providers import ChatStream, CompletedResponse, NoOptions, Provider, ProviderCall
from gateway_core.routes import ExtraRoute, authenticate_request
from gateway_core.routing import Deployment, ModelGroup
from gateway_core.sse import DONE, ChunkStream, PassthroughStream, SSEParser, sse_event
from gateway_core.types import Principal, RequestContext, Usage

__version__ = "0.1.0"

__all__ = [
    "DONE",
    "Balancer",
    "ChatStream",
    "ChunkStream",
    "Command",
    "CompletedResponse",
    "ConfigError",
    "Deployment",
    "DeploymentConfig",
    "DlpFilter",
    "ExtraRoute",
    "Finding",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "HttpClient",
    "ModelGroup",
    "NoOptions",
    "PassthroughStream",
    "Principal",
    "Provider",
    "ProviderCall",
    "RequestContext",
    "SSEParser",
    "Usage",
    "authenticate_request",
    "bad_request",
    "client_timeout",
    "forwarded_headers",
    "hookimpl",
    "load_config",
    "parse_config",
    "post",
    "read_json",
    "sse_event",
]
