"""Typed application keys for the resources every service shares."""

from __future__ import annotations

from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from shared.mongo import Document

REDIS = web.AppKey("redis", Redis)
AMQP = web.AppKey("amqp", AbstractRobustConnection)
MONGO_CLIENT: web.AppKey[AsyncMongoClient[Document]] = web.AppKey("mongo_client")
MONGO_DB: web.AppKey[AsyncDatabase[Document]] = web.AppKey("mongo_db")
REGISTRY = web.AppKey("registry", CollectorRegistry)
SERVICE_NAME = web.AppKey("service_name", str)
